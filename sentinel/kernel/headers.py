"""Compile bcc programs on any kernel: real headers where installed, else a tree built from BTF.

bcc compiles C at run time against the kernel's headers. Many hosts have BTF
(/sys/kernel/btf/vmlinux) but no headers; there this module builds a *fake kernel source
tree* from BTF once, caches it (keyed by the BTF blob, libbcc and this recipe's version),
and points BCC_KERNEL_SOURCE at it. Where /lib/modules/$(uname -r)/build exists the real
headers are used and nothing is built.

bcc (loader.cc / kbuild_helper.cc) always compiles with, in this order:
    -include <tree>/include/linux/kconfig.h
    -include /virtual/include/bcc/bpf.h        bcc's own copy of the uapi bpf.h; it includes
                                               <linux/types.h>, <linux/bpf_common.h>
    -include /virtual/include/bcc/bpf_workaround.h
    -include /virtual/include/bcc/helpers.h    includes <uapi/linux/bpf.h>,
                                               <uapi/linux/if_packet.h>, <linux/version.h>,
                                               <linux/log2.h>, <asm/page.h>
so the tree holds: kconfig.h (+ generated/autoconf.h from the running kernel's config),
a minimal linux/types.h (what bcc's bpf.h needs before any kernel type), bpf_common.h,
and uapi/linux/bpf.h, if_packet.h, log2.h that include bcc_vmlinux.h: the kernel types
therefore arrive right after bcc's bpf.h, so kernel structs that embed uapi structs by value
find them complete. bcc_vmlinux.h = `bpftool btf dump ... format c` with three fixes:

a) enums whose BTF size is 1 (kernel `__packed` enums; bpftool 7.1 drops the attribute)
   get `__attribute__((mode(byte)))`. Without it, e.g. every member of struct inode after
   such an enum has a wrong offset: reads silently return other fields.
b) `long: 0;` after every `long: 64;` padding. Clang merges a run of padding bitfields
   into one wide integer (i448); bcc lowers to x86_64 IR but generates code with the BPF
   datalayout, where such integers are 16-aligned, which shifts every later member
   (bcc issue 4890). The zero-width field ends the run: each pad stays an i64.
c) every top-level definition bcc's bpf.h already has is removed, found by compiling
   through bcc and reading clang's redefinition errors, repeated until it compiles.
bcc_btf_compat.h adds what BTF cannot carry: errno/signal/socket constants (values from
Python's own modules), __always_inline, likely(), container_of(), ntohs()...

Both bugs give wrong offsets without any error, so every build is checked before it is
used: sizeof/offsetof of every uniquely named BTF struct/union against BTF
(_Static_assert), and the LLVM IR of a program touching every struct for iN>64 storage.
A build that fails a check is never cached.

BTF also answers "does this kernel have field X" without version numbers:
`btf_feature_cflags()` turns the data table BTF_FEATURES into -DSENTINEL_HAVE_* flags
that `load_bpf` passes to every compile.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import functools
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import signal as _signal
import socket as _socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from sentinel.config import SensorConfig
from sentinel.errors import KernelError, SourceLocation
from sentinel.log import get_logger

if TYPE_CHECKING:
    import bcc

log = get_logger("sentinel.kernel.headers")

# Bump when the generated tree changes: old caches are then ignored, never reused.
RECIPE_VERSION = "8"
BTF_PATH = "/sys/kernel/btf/vmlinux"
# Tests and CI point every caller at a scratch cache with this variable.
CACHE_DIR_ENV = "SENTINEL_BTF_CACHE_DIR"
VMLINUX_BODY = "bcc_vmlinux_body.h"
BUILD_REPORT = "bcc_btf.json"

# Headers BCC programs commonly #include; in the fake tree each is a one-line stub that
# includes bcc_vmlinux.h (all types come from BTF).
COMMON_STUBS = """
linux/sched.h linux/sched/signal.h linux/fs.h linux/fdtable.h linux/file.h
linux/dcache.h linux/mount.h linux/path.h linux/binfmts.h linux/cred.h
linux/mm.h linux/mm_types.h linux/pid.h linux/pid_namespace.h linux/nsproxy.h
linux/ptrace.h uapi/linux/ptrace.h linux/signal.h linux/errno.h linux/kernel.h
linux/string.h linux/bpf.h linux/security.h linux/lsm_hooks.h linux/socket.h
linux/net.h linux/in.h linux/in6.h linux/ip.h linux/ipv6.h linux/tcp.h
linux/udp.h linux/icmp.h linux/skbuff.h linux/netdevice.h linux/if_ether.h
net/sock.h net/inet_sock.h net/tcp.h net/udp.h net/ipv6.h net/net_namespace.h
net/tcp_states.h linux/blkdev.h linux/blk-mq.h linux/genhd.h linux/uio.h
linux/tty.h linux/init_task.h linux/time.h linux/cgroup.h linux/kthread.h
linux/irq.h linux/interrupt.h linux/slab.h linux/utsname.h linux/stat.h
uapi/linux/limits.h linux/limits.h uapi/linux/in.h uapi/linux/in6.h
uapi/linux/tcp.h uapi/linux/ip.h uapi/linux/bpf_perf_event.h
uapi/linux/if_ether.h
""".split()

# Headers bcc serves from memory (/virtual/include): never dropped by fix_includes().
_BCC_VIRTUAL_HEADERS = frozenset(
    {"bcc/proto.h", "bcc/helpers.h", "bcc/bpf.h", "bcc/bpf_workaround.h", "bcc/footer.h", "stdarg.h"}
)


class BtfFeature(NamedTuple):
    """One compile-time feature macro, defined when BTF shows the kernel has the thing.

    kind "member": struct/union `type_name` has member `member`;
    kind "type": a struct/union named `type_name` exists;
    kind "enumerator": enum `type_name` (or any enum when "") has enumerator `member`;
    kind "func": the kernel function `type_name` is in BTF (e.g. an LSM hook's BPF stub).
    """

    macro: str
    kind: str
    type_name: str
    member: str = ""


# Programs test these with #ifdef instead of kernel versions; add rows as sensors need them.
BTF_FEATURES: tuple[BtfFeature, ...] = (
    BtfFeature("SENTINEL_HAVE_BPRM_EXECUTABLE", "member", "linux_binprm", "executable"),
    BtfFeature("SENTINEL_HAVE_TASK_LOGINUID", "member", "task_struct", "loginuid"),
    BtfFeature("SENTINEL_HAVE_TASK_STATE_RENAMED", "member", "task_struct", "__state"),
    BtfFeature("SENTINEL_HAVE_TASK_START_BOOTTIME", "member", "task_struct", "start_boottime"),
    BtfFeature("SENTINEL_HAVE_KERNFS_PARENT_RENAMED", "member", "kernfs_node", "__parent"),
    BtfFeature("SENTINEL_HAVE_INODE_TIME_SEC", "member", "inode", "i_mtime_sec"),
    BtfFeature("SENTINEL_HAVE_INODE___I_CTIME", "member", "inode", "__i_ctime"),
    BtfFeature("SENTINEL_HAVE_OVL_INODE", "type", "ovl_inode"),
    BtfFeature("SENTINEL_HAVE_RINGBUF", "enumerator", "bpf_map_type", "BPF_MAP_TYPE_RINGBUF"),
    BtfFeature("SENTINEL_HAVE_SEND_SIGNAL", "enumerator", "bpf_func_id", "BPF_FUNC_send_signal"),
    BtfFeature("SENTINEL_HAVE_MNT_IDMAP", "type", "mnt_idmap"),
)
_FEATURE_KINDS = frozenset({"member", "type", "enumerator", "func"})


@dataclass(frozen=True)
class KernelSource:
    """Where bcc finds kernel types on this host, and what it cost to get them."""

    kind: str  # "headers" (real kernel headers) or "btf" (tree built from BTF)
    path: str
    build_seconds: float | None  # set when this call built the BTF tree
    cache_hit: bool  # the BTF tree was already built (always False for "headers")


def cache_dir(configured: str | None = None) -> str:
    """The BTF cache directory: the test override, else the configured one, else the default."""
    return os.environ.get(CACHE_DIR_ENV) or configured or SensorConfig().btf_cache_dir


def headers_dir() -> str | None:
    """The running kernel's real header tree, if the distribution installed it."""
    build = "/lib/modules/%s/build" % os.uname().release
    return build if os.path.isdir(os.path.join(build, "include")) else None


@functools.cache
def _kernel_source_cached(cache: str, btf_path: str) -> KernelSource:
    real = headers_dir()
    if real is not None:
        log.info("kernel.source", kind="headers", path=real)
        return KernelSource("headers", real, None, False)
    source = _ensure_tree_source(cache, btf_path)
    log.info("kernel.source", kind="btf", path=source.path, cache_hit=source.cache_hit)
    return source


def kernel_source(configured_cache_dir: str | None = None, btf_path: str = BTF_PATH) -> KernelSource:
    """Pick real headers or the BTF tree (building it on first use); once per process.

    With the BTF tree, BCC_KERNEL_SOURCE is set in this process so every later bcc.BPF()
    compiles against it; with real headers it is left alone.
    """
    source = _kernel_source_cached(cache_dir(configured_cache_dir), btf_path)
    if source.kind == "btf":
        os.environ["BCC_KERNEL_SOURCE"] = source.path
    return source


def btf_tree(configured_cache_dir: str | None = None, btf_path: str = BTF_PATH) -> KernelSource:
    """The BTF-derived tree for the running kernel, built and cached if missing.

    Idempotent and safe across processes: builders take a lock, and a finished tree is
    renamed into place, so a half-built tree is never seen.
    """
    return _ensure_tree_source(cache_dir(configured_cache_dir), btf_path)


def ensure_tree(configured_cache_dir: str | None = None, btf_path: str = BTF_PATH, set_env: bool = True) -> str:
    """Path of btf_tree(); with set_env, BCC_KERNEL_SOURCE points at it (bcc reads it at
    every BPF() call)."""
    source = btf_tree(configured_cache_dir, btf_path)
    if set_env:
        os.environ["BCC_KERNEL_SOURCE"] = source.path
    return source.path


def fix_includes(text: str, tree: str, include_dirs: Iterable[str] = ()) -> str:
    """Comment out `#include <...>` lines that neither the tree, `include_dirs` (the
    program's own -I directories) nor bcc can satisfy.

    Programs written for real headers include files the fake tree lacks; their types come
    from BTF anyway, so the include is dropped visibly rather than failing the compile.
    """
    arch = _kernel_arch()
    search = [
        os.path.join(tree, d)
        for d in ("include", "arch/%s/include" % arch, "include/uapi", "arch/%s/include/uapi" % arch)
    ] + list(include_dirs)

    def keep_or_drop(match: re.Match[str]) -> str:
        name = match.group(2)
        if name in _BCC_VIRTUAL_HEADERS or any(os.path.exists(os.path.join(d, name)) for d in search):
            return match.group(0)
        return "/* sentinel: dropped %s */" % match.group(0).strip()

    return re.sub(r"^([ \t]*#[ \t]*include[ \t]*<([^>]+)>.*)$", keep_or_drop, text, flags=re.M)


def load_bpf(
    text: str,
    cflags: Sequence[str] = (),
    configured_cache_dir: str | None = None,
    **bpf_kwargs: Any,
) -> bcc.BPF:
    """Compile and load `text` with bcc on this host, with the BTF feature macros defined.

    The one way sentinel compiles C: it picks headers or the BTF tree, drops unsatisfiable
    includes on the latter, and adds btf_feature_cflags() before the caller's cflags.
    """
    source = kernel_source(configured_cache_dir)
    if source.kind == "btf":
        own_dirs = [flag[2:] for flag in cflags if flag.startswith("-I") and len(flag) > 2]
        text = fix_includes(text, source.path, own_dirs)
    from bcc import BPF

    all_cflags = [*btf_feature_cflags(configured_cache_dir), *cflags]
    return BPF(text=text.encode(), cflags=all_cflags, **bpf_kwargs)


def btf_feature_cflags(configured_cache_dir: str | None = None, btf_path: str = BTF_PATH) -> list[str]:
    """-D flags for every BTF_FEATURES row this kernel's BTF satisfies.

    Without BTF nothing can be asked, so no macro is defined (programs take the
    conservative branch); that is logged once.
    """
    return list(_feature_cflags_cached(cache_dir(configured_cache_dir), btf_path, BTF_FEATURES))


@functools.cache
def _feature_cflags_cached(cache: str, btf_path: str, features: tuple[BtfFeature, ...]) -> tuple[str, ...]:
    for feature in features:
        if feature.kind not in _FEATURE_KINDS:
            raise KernelError(
                "BTF feature %s: unknown kind %r (known: %s)"
                % (feature.macro, feature.kind, ", ".join(sorted(_FEATURE_KINDS)))
            )
    if not os.path.exists(btf_path):
        log.warning("kernel.btf_features.unavailable", btf=btf_path)
        return ()
    digest = hashlib.sha256()
    _hash_file(btf_path, digest)
    digest.update(repr(features).encode())
    cached = os.path.join(cache, "features-%s.json" % digest.hexdigest()[:20])
    try:
        with open(cached) as f:
            return tuple(json.load(f))
    except (OSError, ValueError):
        pass
    flags = tuple("-D%s" % f.macro for f in features_present(_btf_types(btf_path), features))
    try:
        os.makedirs(cache, exist_ok=True)
        _write_atomic(cached, json.dumps(list(flags)))
    except OSError as exc:  # a read-only cache (e.g. a shared root) only costs a re-read
        log.debug("kernel.btf_features.cache_unwritable", path=cached, error=str(exc))
    log.info("kernel.btf_features", flags=list(flags))
    return flags


def features_present(btf_types: Iterable[dict[str, Any]], features: Iterable[BtfFeature]) -> list[BtfFeature]:
    """The rows of `features` that the BTF type list (bpftool -j) satisfies."""
    members: dict[str, set[str]] = {}
    enumerators: dict[str, set[str]] = {}
    funcs: set[str] = set()
    for t in btf_types:
        kind, name = t["kind"], t.get("name", "")
        if kind in ("STRUCT", "UNION"):
            members.setdefault(name, set()).update(m["name"] for m in t.get("members", ()))
        elif kind in ("ENUM", "ENUM64"):
            values = {v["name"] for v in t.get("values", ())}
            enumerators.setdefault(name, set()).update(values)
            enumerators.setdefault("", set()).update(values)
        elif kind == "FUNC":
            funcs.add(name)
    present = []
    for f in features:
        if f.kind == "member":
            have = f.member in members.get(f.type_name, ())
        elif f.kind == "type":
            have = f.type_name in members
        elif f.kind == "enumerator":
            have = f.member in enumerators.get(f.type_name, ())
        else:
            have = f.type_name in funcs
        if have:
            present.append(f)
    return present


# ---------------------------------------------------------------- cache and build


def cache_key(btf_path: str = BTF_PATH) -> str:
    """Hash of what the tree depends on: the BTF blob, libbcc (its bundled bpf.h decides
    what gets dropped), the kernel release and this recipe's version."""
    digest = hashlib.sha256()
    _hash_file(btf_path, digest)
    lib = _libbcc_path()
    if lib:
        digest.update(lib.encode())
        digest.update(str(os.stat(lib).st_size).encode())
    digest.update(os.uname().release.encode())
    digest.update(RECIPE_VERSION.encode())
    return digest.hexdigest()[:20]


def _ensure_tree_source(cache: str, btf_path: str) -> KernelSource:
    if not os.path.exists(btf_path):
        raise KernelError(
            "no kernel headers (/lib/modules/%s/build) and no BTF: bcc cannot compile" % os.uname().release,
            SourceLocation(btf_path),
        )
    final = os.path.join(cache, cache_key(btf_path))
    report = os.path.join(final, BUILD_REPORT)
    if os.path.exists(report):
        log.debug("kernel.btf_tree.cache_hit", path=final)
        return KernelSource("btf", final, None, True)
    try:
        os.makedirs(cache, exist_ok=True)
        lock_fd = os.open(os.path.join(cache, ".build.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise KernelError("cannot write the BTF header cache: %s" % exc.strerror, SourceLocation(cache)) from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # another process may be building the same tree
        if os.path.exists(report):
            return KernelSource("btf", final, None, True)
        started = time.monotonic()
        scratch = tempfile.mkdtemp(prefix=os.path.basename(final) + ".tmp-", dir=cache)
        try:
            shutil.rmtree(scratch)
            build_tree(scratch, btf_path)
            os.rename(scratch, final)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        seconds = round(time.monotonic() - started, 2)
        log.info("kernel.btf_tree.built", path=final, build_seconds=seconds)
        return KernelSource("btf", final, seconds, False)
    finally:
        os.close(lock_fd)


def _hash_file(path: str, digest: Any) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _write_atomic(path: str, text: str) -> None:
    scratch = "%s.%d.tmp" % (path, os.getpid())
    _write(scratch, text)
    os.replace(scratch, path)


def _kernel_arch() -> str:
    """The kernel's name for this architecture (the arch/<name> directory)."""
    machine = os.environ.get("ARCH") or platform.machine()
    if machine.startswith("x86_64") or re.match(r"i.86", machine):
        return "x86"
    for prefix, arch in (
        ("aarch64", "arm64"),
        ("arm64", "arm64"),
        ("arm", "arm"),
        ("s390", "s390"),
        ("ppc", "powerpc"),
        ("mips", "mips"),
        ("riscv", "riscv"),
        ("loongarch", "loongarch"),
    ):
        if machine.startswith(prefix):
            return arch
    return machine


def _libbcc_path() -> str | None:
    for d in (
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
        "/usr/local/lib64",
    ):
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                if name.startswith("libbcc.so"):
                    return os.path.realpath(os.path.join(d, name))
    return None


def _kconfig_lines() -> tuple[str | None, list[str]]:
    """CONFIG_* of the running kernel as #defines, from /proc/config.gz or /boot."""
    source = None
    for candidate in ("/proc/config.gz", "/boot/config-" + os.uname().release):
        if os.path.exists(candidate):
            source = candidate
            break
    if source is None:  # the minimum bcc's helpers.h needs
        lines = ["#define CONFIG_BPF_SYSCALL 1"]
        if _kernel_arch() in ("x86", "arm64"):
            lines.append("#define CONFIG_ARCH_HAS_SYSCALL_WRAPPER 1")
        return None, lines
    lines = []
    opener: Any = gzip.open if source.endswith(".gz") else open
    with opener(source, "rt") as f:
        for line in f:
            match = re.match(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$", line.strip())
            if not match:
                continue
            key, value = match.groups()
            if value == "y":
                lines.append("#define %s 1" % key)
            elif value == "m":
                lines.append("#define %s_MODULE 1" % key)
            elif value.startswith('"') or re.match(r"^-?(0x[0-9a-fA-F]+|\d+)$", value):
                lines.append("#define %s %s" % (key, value))
    return source, lines


def _linux_version_code() -> int:
    numbers = [int(n) for n in re.findall(r"\d+", os.uname().release)[:3]]
    major, minor, patch = (numbers + [0, 0, 0])[:3]
    return (major << 16) + (minor << 8) + min(patch, 255)


def _split_chunks(text: str) -> list[tuple[int, list[str]]]:
    """bpftool's C dump has one top-level declaration per blank-line separated chunk;
    returns (1-based first line, lines) per chunk."""
    chunks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    for number, line in enumerate(text.split("\n"), 1):
        if line == "":
            if current:
                chunks.append((start, current))
                current = []
            continue
        if not current:
            start = number
        current.append(line)
    if current:
        chunks.append((start, current))
    return chunks


def _compile_in_child(
    tree: str, program: str, extra: str = "", timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Compile with bcc in a child process: a failed compile cannot leave this process's
    LLVM state or loaded programs behind, and the child's stderr holds clang's diagnostics."""
    env = dict(os.environ, BCC_KERNEL_SOURCE=tree)
    code = "import sys\nfrom bcc import BPF\nBPF(text=sys.stdin.read()%s)\nprint('COMPILED_OK')\n" % extra
    return subprocess.run(
        [sys.executable, "-c", code], input=program, env=env, capture_output=True, text=True, timeout=timeout
    )


def _compiles(tree: str, program: str) -> tuple[bool, str]:
    result = _compile_in_child(tree, program, ", cflags=['-ferror-limit=0']")
    return "COMPILED_OK" in result.stdout, result.stderr


_DIAGNOSTIC = re.compile(
    r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|fatal error): (?P<msg>.*)$", re.M
)

# Exercises helpers.h, maps, a ring buffer and a struct read: what the filter loop needs
# to compile before the tree is usable.
_FILTER_PROGRAM = r"""
BPF_HASH(h, u32, u64);
BPF_RINGBUF_OUTPUT(rb, 1);
int probe(void *ctx) {
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    u32 k = t->real_parent->tgid;
    u64 v = 1;
    h.update(&k, &v);
    return 0;
}
"""
BPF_COMMON_H = r"""
#ifndef _UAPI__LINUX_BPF_COMMON_H__
#define _UAPI__LINUX_BPF_COMMON_H__
#define BPF_CLASS(code) ((code) & 0x07)
#define		BPF_LD		0x00
#define		BPF_LDX		0x01
#define		BPF_ST		0x02
#define		BPF_STX		0x03
#define		BPF_ALU		0x04
#define		BPF_JMP		0x05
#define		BPF_RET		0x06
#define		BPF_MISC        0x07
#define BPF_SIZE(code)  ((code) & 0x18)
#define		BPF_W		0x00
#define		BPF_H		0x08
#define		BPF_B		0x10
#define BPF_MODE(code)  ((code) & 0xe0)
#define		BPF_IMM		0x00
#define		BPF_ABS		0x20
#define		BPF_IND		0x40
#define		BPF_MEM		0x60
#define		BPF_LEN		0x80
#define		BPF_MSH		0xa0
#define BPF_OP(code)    ((code) & 0xf0)
#define		BPF_ADD		0x00
#define		BPF_SUB		0x10
#define		BPF_MUL		0x20
#define		BPF_DIV		0x30
#define		BPF_OR		0x40
#define		BPF_AND		0x50
#define		BPF_LSH		0x60
#define		BPF_RSH		0x70
#define		BPF_NEG		0x80
#define		BPF_MOD		0x90
#define		BPF_XOR		0xa0
#define		BPF_JA		0x00
#define		BPF_JEQ		0x10
#define		BPF_JGT		0x20
#define		BPF_JGE		0x30
#define		BPF_JSET        0x40
#define BPF_SRC(code)   ((code) & 0x08)
#define		BPF_K		0x00
#define		BPF_X		0x08
#ifndef BPF_MAXINSNS
#define BPF_MAXINSNS 4096
#endif
#endif
"""

KCONFIG_MACROS = r"""
#define __ARG_PLACEHOLDER_1 0,
#define __take_second_arg(__ignored, val, ...) val
#define __is_defined(x)			___is_defined(x)
#define ___is_defined(val)		____is_defined(__ARG_PLACEHOLDER_##val)
#define ____is_defined(arg1_or_junk)	__take_second_arg(arg1_or_junk 1, 0)
#define __or(x, y)			___or(x, y)
#define ___or(x, y)			____or(__ARG_PLACEHOLDER_##x, y)
#define ____or(arg1_or_junk, y)		__take_second_arg(arg1_or_junk 1, y)
#define IS_BUILTIN(option) __is_defined(option)
#define IS_MODULE(option) __is_defined(option##_MODULE)
#define IS_REACHABLE(option) __or(IS_BUILTIN(option), IS_MODULE(option))
#define IS_ENABLED(option) __or(IS_BUILTIN(option), IS_MODULE(option))
"""


def build_tree(dest: str, btf_path: str = BTF_PATH, max_iterations: int = 30) -> dict[str, Any]:
    """Create the fake kernel tree in `dest` (must not exist) and return its build report.

    Raises KernelError when the tree cannot be made to compile or fails a layout check:
    a tree with wrong offsets must never be used.
    """
    started = time.monotonic()
    arch = _kernel_arch()
    include = os.path.join(dest, "include")
    for d in (
        "include/uapi",
        "include/generated/uapi",
        "arch/%s/include/generated/uapi" % arch,
        "arch/%s/include/uapi" % arch,
    ):
        os.makedirs(os.path.join(dest, d))

    dump = subprocess.run(
        ["bpftool", "btf", "dump", "file", btf_path, "format", "c"], check=True, capture_output=True, text=True
    ).stdout
    btf_types = _btf_types(btf_path)
    dump, enums_resized = _fix_enum_sizes(dump, btf_types)
    dump, padding_barriers = _split_padding_runs(dump)
    chunks = _split_chunks(dump)

    config_source = _write_base_headers(dest, arch, chunks)
    _write_compat_header(include, set(re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", dump)))
    iterations, dropped_chunks, dropped_lines, removed = _drop_bcc_duplicates(
        os.path.join(include, VMLINUX_BODY), dest, chunks, max_iterations
    )

    dropped_tags = set()
    for index in dropped_chunks:
        match = re.match(r"^(struct|union) (\w+) \{", chunks[index][1][0])
        if match:
            dropped_tags.add("%s %s" % match.groups())
    layout_asserts, uapi_differences = _check_layout(dest, btf_types, dropped_tags)
    wide = _ir_wide_int_types(dest, btf_types, dropped_tags)
    if wide:
        raise KernelError(
            "BTF tree: structs stored as integers wider than 64 bits would get wrong offsets: %s" % wide[:20],
            SourceLocation(os.path.join(include, VMLINUX_BODY)),
        )
    report = {
        "btf": btf_path,
        "kernel": os.uname().release,
        "libbcc": _libbcc_path(),
        "config": config_source,
        "iterations": iterations,
        "dropped_chunks": len(dropped_chunks),
        "dropped_enumerators": len(dropped_lines),
        "enums_resized": enums_resized,
        "padding_barriers": padding_barriers,
        "layout_asserts": layout_asserts,
        "uapi_types_differing_from_kernel": uapi_differences,  # and the kernel types embedding them
        "build_seconds": round(time.monotonic() - started, 2),
        "removed": removed,
    }
    _write(os.path.join(dest, BUILD_REPORT), json.dumps(report, indent=1))
    return report


def _write_base_headers(dest: str, arch: str, chunks: list[tuple[int, list[str]]]) -> str | None:
    """Everything bcc's own headers include, plus stubs for common kernel headers."""
    include = os.path.join(dest, "include")
    config_source, config = _kconfig_lines()
    _write(
        os.path.join(include, "generated", "autoconf.h"),
        "/* from %s */\n%s\n" % (config_source or "no kernel config found", "\n".join(config)),
    )
    _write(
        os.path.join(include, "linux", "kconfig.h"),
        "#ifndef __SENTINEL_KCONFIG_H\n#define __SENTINEL_KCONFIG_H\n"
        "#include <generated/autoconf.h>\n"
        "/* no CO-RE: bcc does not relocate, and the offsets already match */\n"
        "#define BPF_NO_PRESERVE_ACCESS_INDEX 1\n"
        "#define __SENTINEL_BTF_TREE 1\n" + KCONFIG_MACROS + "#endif\n",
    )
    # linux/types.h: only what bcc's bpf.h needs before the kernel types are seen,
    # copied from the BTF dump so the definitions agree.
    basic = ["__s8", "__u8", "__s16", "__u16", "__s32", "__u32", "__s64", "__u64", "__be16", "__le16",
             "__be32", "__le32", "__be64", "__le64", "__wsum", "__sum16", "__poll_t"]  # fmt: skip
    typedefs = {}
    for _, lines in chunks:
        match = re.match(r"^typedef [^{;]* (\w+);$", lines[0]) if len(lines) == 1 else None
        if match and match.group(1) in basic:
            typedefs[match.group(1)] = lines[0]
    types_h = ["#ifndef __SENTINEL_TYPES_H", "#define __SENTINEL_TYPES_H"]
    types_h += [typedefs[name] for name in basic if name in typedefs]  # dependency order
    types_h += [
        "#define __bitwise",
        "#define __aligned_u64 __u64 __attribute__((aligned(8)))",
        "#define __aligned_be64 __be64 __attribute__((aligned(8)))",
        "#define __aligned_le64 __le64 __attribute__((aligned(8)))",
        "#endif",
    ]
    _write(os.path.join(include, "linux", "types.h"), "\n".join(types_h) + "\n")
    _write(os.path.join(include, "uapi", "linux", "types.h"), "#include <linux/types.h>\n")
    _write(os.path.join(include, "linux", "bpf_common.h"), BPF_COMMON_H)
    _write(os.path.join(include, "uapi", "linux", "bpf_common.h"), BPF_COMMON_H)

    # what helpers.h includes after bcc's bpf.h: the kernel types enter here
    vmlinux = "#include <bcc_vmlinux.h>\n"
    for name in ("uapi/linux/bpf.h", "uapi/linux/if_packet.h", "linux/log2.h"):
        _write(os.path.join(include, name), vmlinux)
    _write(
        os.path.join(include, "linux", "version.h"),
        "#ifndef __SENTINEL_VERSION_H\n#define __SENTINEL_VERSION_H\n"
        "#define LINUX_VERSION_CODE %d\n"
        "#define KERNEL_VERSION(a,b,c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))\n"
        "#endif\n" % _linux_version_code(),
    )
    page = os.sysconf("SC_PAGE_SIZE")
    _write(
        os.path.join(dest, "arch", arch, "include", "asm", "page.h"),
        "#ifndef __SENTINEL_PAGE_H\n#define __SENTINEL_PAGE_H\n"
        "#define PAGE_SHIFT %d\n#define PAGE_SIZE %dUL\n"
        "#define PAGE_MASK (~(PAGE_SIZE-1))\n#endif\n" % (page.bit_length() - 1, page),
    )
    for stub in COMMON_STUBS:
        path = os.path.join(include, stub)
        if not os.path.exists(path):
            _write(path, vmlinux)
    _write(
        os.path.join(include, "bcc_vmlinux.h"),
        '#ifndef __SENTINEL_VMLINUX_H\n#define __SENTINEL_VMLINUX_H\n#include "%s"\n'
        '#include "bcc_btf_compat.h"\n#endif\n' % VMLINUX_BODY,
    )
    return config_source


# Kernel compiler/kernel.h macros bcc programs use; BTF carries no macros.
_COMPAT_MACROS = (
    ("__always_inline", "inline __attribute__((always_inline))"),
    ("noinline", "__attribute__((noinline))"),
    ("__packed", "__attribute__((packed))"),
    ("__aligned(x)", "__attribute__((aligned(x)))"),
    ("__maybe_unused", "__attribute__((unused))"),
    ("likely(x)", "__builtin_expect(!!(x), 1)"),
    ("unlikely(x)", "__builtin_expect(!!(x), 0)"),
    ("barrier()", 'asm volatile("" ::: "memory")'),
    ("ARRAY_SIZE(a)", "(sizeof(a) / sizeof((a)[0]))"),
    ("container_of(ptr, type, member)", "((type *)((void *)(ptr) - offsetof(type, member)))"),
    ("__user", ""),
    ("__kernel", ""),
    ("__force", ""),
    ("__iomem", ""),
    ("__rcu", ""),
    ("__percpu", ""),
    ("__must_check", ""),
)


def _write_compat_header(include: str, btf_identifiers: set[str]) -> None:
    """Macros BTF cannot carry: errno, signal and socket constants, compiler helpers."""
    lines = [
        "/* macros that are not in BTF; generated by sentinel.kernel.headers */",
        "#ifndef NULL\n#define NULL ((void *)0)\n#endif",
        "#ifndef offsetof\n#define offsetof(TYPE, MEMBER) __builtin_offsetof(TYPE, MEMBER)\n#endif",
    ]
    for name, value in _COMPAT_MACROS:
        lines.append("#ifndef %s\n#define %s %s\n#endif" % (name.split("(")[0], name, value))
    constants = [(name, code) for code, name in _errno.errorcode.items()]
    constants += [(s.name, int(s)) for s in _signal.Signals if not s.name.startswith(("SIG_", "SIGRT"))]
    constants += [
        (name, int(getattr(_socket, name)))
        for name in dir(_socket)
        if re.match(r"^(AF|SOCK)_[A-Z0-9_]+$", name) and isinstance(getattr(_socket, name), int)
    ]
    for name, value in sorted(constants):
        if name not in btf_identifiers:  # never shadow a kernel identifier
            lines.append("#ifndef %s\n#define %s %d\n#endif" % (name, name, value))
    for function in ("ntohs", "htons", "ntohl", "htonl"):  # helpers.h defines bpf_ntohs() & co
        lines.append("#ifndef %s\n#define %s(x) bpf_%s(x)\n#endif" % (function, function, function))
    _write(os.path.join(include, "bcc_btf_compat.h"), "\n".join(lines) + "\n")


def _drop_bcc_duplicates(
    body_path: str, tree: str, chunks: list[tuple[int, list[str]]], max_iterations: int
) -> tuple[int, set[int], set[int], list[tuple[str, str, str]]]:
    """Write the BTF dump without what bcc's bpf.h already defines.

    Compiles through bcc and reads clang's errors: a redefined struct/enum/typedef drops
    its whole chunk, a clashing enumerator drops that one line; repeated until it compiles.
    """
    dropped_chunks: set[int] = set()
    dropped_lines: set[int] = set()  # absolute dump line numbers (enumerators)
    line_to_chunk = {start + j: index for index, (start, lines) in enumerate(chunks) for j in range(len(lines))}
    removed: list[tuple[str, str, str]] = []

    def render() -> tuple[str, dict[int, int]]:
        out: list[str] = []
        written_to_dump: dict[int, int] = {}
        for index, (start, lines) in enumerate(chunks):
            if index in dropped_chunks:
                continue
            kept = [(start + j, line) for j, line in enumerate(lines) if start + j not in dropped_lines]
            if lines[0].startswith("enum") and lines[-1].startswith("}"):
                if not any(re.match(r"^\t\w+ = ", line) for _, line in kept):
                    continue  # every enumerator was dropped
            for dump_line, line in kept:
                out.append(line)
                written_to_dump[len(out)] = dump_line
            out.append("")
        return "\n".join(out) + "\n", written_to_dump

    errors = ""
    for iteration in range(1, max_iterations + 1):
        body, written_to_dump = render()
        _write(body_path, body)
        started = time.monotonic()
        ok, errors = _compiles(tree, _FILTER_PROGRAM)
        diagnostics = list(_DIAGNOSTIC.finditer(errors))
        log.debug(
            "kernel.btf_tree.filter",
            iteration=iteration,
            compile_seconds=round(time.monotonic() - started, 2),
            ok=ok,
            errors=len(diagnostics),
        )
        if ok:
            return iteration, dropped_chunks, dropped_lines, removed
        progress = False
        foreign = []
        for diagnostic in diagnostics:
            if os.path.basename(diagnostic.group("file")) != VMLINUX_BODY:
                foreign.append(diagnostic.group(0))
                continue
            dump_line = written_to_dump.get(int(diagnostic.group("line")))
            if dump_line is None:
                continue
            index = line_to_chunk[dump_line]
            if index in dropped_chunks:
                continue
            start, lines = chunks[index]
            line = lines[dump_line - start]
            if lines[0].startswith("enum") and dump_line != start and re.match(r"^\t\w+ = ", line):
                if dump_line not in dropped_lines:
                    dropped_lines.add(dump_line)
                    removed.append(("enumerator", line.strip(), diagnostic.group("msg")))
                    progress = True
            else:
                dropped_chunks.add(index)
                removed.append(("chunk", lines[0][:80], diagnostic.group("msg")))
                progress = True
        if not progress:
            raise KernelError(
                "BTF tree: compile errors outside the BTF types:\n%s\n%s" % ("\n".join(foreign[:30]), errors[-4000:]),
                SourceLocation(body_path),
            )
    raise KernelError(
        "BTF tree: still failing after %d iterations:\n%s" % (max_iterations, errors[-6000:]),
        SourceLocation(body_path),
    )


def _unique_named_composites(btf_types: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """("struct foo", type) for each struct/union whose name is unique in BTF (bpftool
    renames duplicates to foo___2, so only unique names are checkable by name)."""
    count: dict[str, int] = {}
    for t in btf_types:
        if t["kind"] in ("STRUCT", "UNION", "ENUM", "ENUM64"):
            count[t["name"]] = count.get(t["name"], 0) + 1
    return [
        ("%s %s" % (t["kind"].lower(), t["name"]), t)
        for t in btf_types
        if t["kind"] in ("STRUCT", "UNION") and t["name"] != "(anon)" and count[t["name"]] == 1
    ]


def _check_layout(tree: str, btf_types: list[dict[str, Any]], dropped_tags: set[str]) -> tuple[int, list[str]]:
    """Every uniquely named struct/union must have BTF's size and member offsets in what bcc
    compiles. Types bcc's bundled (older) bpf.h owns may differ: they are only reported;
    a kernel type that embeds one by value fails its own asserts and so the build."""
    lines = []
    for tag, t in _unique_named_composites(btf_types):
        lines.append('_Static_assert(sizeof(%s) == %d, "sentinel_layout:%s");' % (tag, t["size"], tag))
        for member in t.get("members", []):
            if member["name"] == "(anon)" or member.get("bitfield_size") or member["bits_offset"] % 8:
                continue
            lines.append(
                '_Static_assert(__builtin_offsetof(%s, %s) == %d, "sentinel_layout:%s");'
                % (tag, member["name"], member["bits_offset"] // 8, tag)
            )
    program = "\n".join(lines) + "\nint sentinel_layout_check(void *ctx) { return 0; }\n"
    started = time.monotonic()
    ok, errors = _compiles(tree, program)
    failed = set(re.findall(r"sentinel_layout:(\w+ \w+)", errors))
    uapi_differences = sorted(failed & dropped_tags)
    # e.g. struct bpf_ctx_convert embeds every program context by value: it differs
    # because a uapi member differs, not because the tree is wrong.
    carriers = _embedders(btf_types, set(uapi_differences))
    bad = sorted(failed - dropped_tags - carriers)
    log.debug(
        "kernel.btf_tree.layout_check",
        asserts=len(lines),
        seconds=round(time.monotonic() - started, 2),
        uapi_differences=uapi_differences,
        embedding_them=sorted(failed & carriers),
    )
    if bad or (not ok and not failed):
        raise KernelError(
            "BTF tree: layout check failed for %s\n%s" % (bad, errors[-4000:]),
            SourceLocation(os.path.join(tree, "include", VMLINUX_BODY)),
        )
    return len(lines), uapi_differences + sorted(failed & carriers)


def _embedders(btf_types: list[dict[str, Any]], tags: set[str]) -> set[str]:
    """Struct/union tags that contain one of `tags` by value, directly or transitively."""
    by_id = {t["id"]: t for t in btf_types}

    def embedded_tag(type_id: int) -> str | None:
        t = by_id.get(type_id)
        while t and t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "ARRAY", "TYPE_TAG"):
            t = by_id.get(t.get("type_id") or t.get("elem_type_id"))
        if t and t["kind"] in ("STRUCT", "UNION"):
            return "%s %s" % (t["kind"].lower(), t["name"]) if t["name"] != "(anon)" else "#%d" % t["id"]
        return None

    contains: dict[str, set[str]] = {}
    for t in btf_types:
        if t["kind"] in ("STRUCT", "UNION"):
            tag = "%s %s" % (t["kind"].lower(), t["name"]) if t["name"] != "(anon)" else "#%d" % t["id"]
            contains.setdefault(tag, set()).update(
                e for e in (embedded_tag(m["type_id"]) for m in t.get("members", [])) if e
            )
    found: set[str] = set()
    frontier = set(tags)
    while frontier:
        frontier = {outer for outer, inner in contains.items() if inner & frontier and outer not in found}
        found |= frontier
    return found


def _ir_wide_int_types(tree: str, btf_types: list[dict[str, Any]], skip_tags: set[str]) -> list[str]:
    """Struct IR types holding an integer wider than 64 bits (see fix b in the module doc).

    bcc lowers C to x86_64 IR, then generates code with the BPF datalayout, where such
    integers are 16-aligned instead of 8: offsetof() stays right, the generated loads do
    not, so the layout check cannot see it. A genuine __int128 member is fine.
    """
    by_id = {t["id"]: t for t in btf_types}
    has_int128 = set()
    uses = []
    for tag, t in _unique_named_composites(btf_types):
        if tag in skip_tags:
            continue
        uses.append("  s += (u64)(((%s *)b) + 1);" % tag)
        for member in t.get("members", []):
            member_type = by_id.get(member["type_id"])
            while member_type and member_type["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "ARRAY"):
                member_type = by_id.get(member_type.get("type_id") or member_type.get("elem_type_id"))
            if member_type and member_type["kind"] == "INT" and member_type.get("size") == 16:
                has_int128.add(tag.replace(" ", "."))
    program = "int sentinel_ir_scan(void *ctx) {\n  u64 b = bpf_get_current_task(), s = 0;\n%s\n  return s;\n}\n" % (
        "\n".join(uses)
    )
    started = time.monotonic()
    result = _compile_in_child(tree, program, ", debug=0x1")
    ir = result.stdout + result.stderr
    if "target datalayout" not in ir:
        raise KernelError("BTF tree: the IR check did not compile:\n" + ir[-3000:], SourceLocation(tree))
    wide = []
    for match in re.finditer(r"^%((?:struct|union)\.[\w.]+) = type (<?\{.*\}>?)$", ir, re.M):
        widths = {int(w) for w in re.findall(r"\bi(\d+)\b", match.group(2)) if int(w) > 64}
        if not widths:
            continue
        name = re.sub(r"\.\d+$", "", match.group(1))
        if widths == {128} and (name in has_int128 or ".anon" in name):
            continue
        wide.append(match.group(1))
    log.debug("kernel.btf_tree.ir_check", seconds=round(time.monotonic() - started, 2), wide=wide)
    return sorted(wide)


def _btf_types(btf_path: str) -> list[dict[str, Any]]:
    dump = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", btf_path], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(dump)["types"]


_ENUM_MODE = {1: "byte", 2: "HI", 4: "SI", 8: "DI"}


def _fix_enum_sizes(dump: str, btf_types: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """Fix a: give every named enum whose BTF size differs from clang's choice a mode().

    bpftool < 7.2 dumps `enum foo {..} __packed` (BTF size 1) as a plain enum, which clang
    makes 4 bytes, so every later member of the enclosing struct has a wrong offset.
    """
    want = {}
    for t in btf_types:
        if t["kind"] not in ("ENUM", "ENUM64") or t["name"] == "(anon)":
            continue
        if t["kind"] == "ENUM":  # 32-bit values (bpftool -j sign-extends them)
            natural = 4
        else:
            values = [int(v["val"]) for v in t.get("values", [])]
            natural = 4 if all(-(2**31) <= v < 2**32 for v in values) else 8
        if t["size"] != natural and t["size"] in _ENUM_MODE:
            want[t["name"]] = t["size"]
    resized = []

    def add_mode(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in want and "__attribute__" not in match.group(3):
            resized.append(name)
            return "enum %s {%s} __attribute__((mode(%s)));" % (name, match.group(2), _ENUM_MODE[want[name]])
        return match.group(0)

    dump = re.sub(r"^enum (\w+) \{(\n.*?\n)\}([^;\n]*);$", add_mode, dump, flags=re.M | re.S)
    return dump, sorted(resized)


def _split_padding_runs(dump: str) -> tuple[str, int]:
    """Fix b: a zero-width `long: 0;` after each `long: 64;` padding.

    A layout no-op (we are on an 8-byte boundary there, and on x86-64 unnamed bit-fields
    do not affect alignment) that ends clang's bitfield run, so each pad is its own i64.
    """
    count = 0

    def add_barrier(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return "%slong: 64;\n%slong: 0;" % (match.group(1), match.group(1))

    dump = re.sub(r"^(\t+)long: 64;$", add_barrier, dump, flags=re.M)
    return dump, count
