"""
bcc_btf.py - let BCC's BPF(text=...) compile on a kernel that has BTF
(/sys/kernel/btf/vmlinux) but no kernel headers, by building a *fake kernel
source tree* from BTF and pointing BCC_KERNEL_SOURCE at it.
Tested: Debian bookworm python3-bpfcc/libbpfcc 0.26 (LLVM 14), bpftool 7.1,
kernel 6.18 x86_64.

Usage:
    import bcc_btf
    b = bcc_btf.load(src)               # = ensure_tree() + fix_includes() + bcc.BPF(text=)
  or
    tree = bcc_btf.ensure_tree()        # builds once, cached by BTF(+libbcc) hash,
    from bcc import BPF                 # sets BCC_KERNEL_SOURCE=tree
    b = BPF(text=bcc_btf.fix_includes(src, tree))

BCC (loader.cc / kbuild_helper.cc) always compiles with, in this order:
    -include <tree>/include/linux/kconfig.h
    -include /virtual/include/bcc/bpf.h        (BCC's own copy of uapi bpf.h; it
                                                 #includes <linux/types.h>, <linux/bpf_common.h>)
    -include /virtual/include/bcc/bpf_workaround.h
    -include /virtual/include/bcc/helpers.h    (#includes <uapi/linux/bpf.h>,
                                                 <uapi/linux/if_packet.h>, <linux/version.h>,
                                                 <linux/log2.h>, <asm/page.h>)
build_tree() therefore writes:
    include/linux/kconfig.h            IS_ENABLED() & co, BPF_NO_PRESERVE_ACCESS_INDEX,
                                       includes generated/autoconf.h (from /proc/config.gz)
    include/linux/types.h              only __u8..__u64/__be*/__le*/__wsum (copied from
                                       the BTF dump) + __aligned_u64 macros: what BCC's
                                       bpf.h needs *before* any kernel type is seen
    include/linux/bpf_common.h         uapi macros
    include/uapi/linux/bpf.h,          -> #include <bcc_vmlinux.h>  (i.e. the kernel
    include/uapi/linux/if_packet.h,       types are seen right *after* BCC's bpf.h, so
    include/linux/log2.h                  kernel structs embedding uapi structs by
                                          value find them complete)
    include/linux/version.h            LINUX_VERSION_CODE from uname
    arch/<arch>/include/asm/page.h     PAGE_SIZE
    include/bcc_vmlinux.h              bcc_vmlinux_body.h + bcc_btf_compat.h
    include/bcc_vmlinux_body.h         `bpftool btf dump ... format c`, post-processed:
        a) enums whose BTF size is 1 (kernel __packed enums; bpftool 7.1 drops the
           attribute) get __attribute__((mode(byte)))  -> e.g. struct inode layout
        b) `long: 0;` after every `long: 64;` padding  -> no wide iN bitfield runs
           in the IR (BCC's x86_64-IR -> BPF-datalayout bug, iovisor/bcc#4890)
        c) every top-level definition BCC's bpf.h already has is removed - found by
           compiling through BCC and reading the compiler's errors (redefinition of
           struct/enum/typedef -> drop the whole chunk; redefinition of an enumerator
           or an enumerator clashing with a bpf.h macro -> drop that one line);
           repeated until it compiles (2 iterations here)
    include/bcc_btf_compat.h           macros BTF cannot carry: errno (E*), SIG*, AF_*/SOCK_*
                                       (values from Python's errno/signal/socket),
                                       __always_inline, likely(), container_of(), ntohs()...
    include/{linux,net,uapi/linux}/... one-line stubs for commonly #included headers
    bcc_btf.json                       build report
and verifies at build time (only):
    - sizeof/offsetof of every uniquely named BTF struct/union == BTF (_Static_assert)
    - the LLVM IR of a program touching every struct has no iN>64 bitfield storage
"""
import errno as _errno
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

SCRIPT_VERSION = "7"
BTF_PATH = "/sys/kernel/btf/vmlinux"
DEFAULT_CACHE = os.environ.get("BCC_BTF_CACHE", "/var/cache/sentinel/bcc-btf")
VMLINUX_NAME = "bcc_vmlinux_body.h"

# Kernel headers commonly #included by BCC programs.  In the fake tree they
# are one-line stubs pointing at bcc_vmlinux.h.
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

# a probe program that exercises helpers.h, maps, a ring buffer and a
# struct read, used while filtering
PROBE_PROG = r"""
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


# ---------------------------------------------------------------- helpers
def _log(verbose, *a):
    if verbose:
        print("[bcc_btf]", *a, file=sys.stderr, flush=True)


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _kernel_arch():
    m = os.environ.get("ARCH") or platform.machine()
    if m.startswith("x86_64") or re.match(r"i.86", m):
        return "x86"
    if m.startswith("aarch64") or m.startswith("arm64"):
        return "arm64"
    if m.startswith("arm"):
        return "arm"
    if m.startswith("s390"):
        return "s390"
    if m.startswith("ppc"):
        return "powerpc"
    if m.startswith("mips"):
        return "mips"
    if m.startswith("riscv"):
        return "riscv"
    if m.startswith("loongarch"):
        return "loongarch"
    return m


def _libbcc_path():
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
              "/usr/lib64", "/usr/lib", "/usr/local/lib", "/usr/local/lib64"):
        for n in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if n.startswith("libbcc.so"):
                return os.path.realpath(os.path.join(d, n))
    return None


def _file_digest(path, h):
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)


def cache_key(btf_path=BTF_PATH):
    """sha256 over the BTF blob, libbcc (its embedded bpf.h decides what is
    dropped), kernel release and this script's version."""
    h = hashlib.sha256()
    _file_digest(btf_path, h)
    lib = _libbcc_path()
    if lib:
        h.update(lib.encode())
        h.update(str(os.stat(lib).st_size).encode())
    h.update(os.uname().release.encode())
    h.update(SCRIPT_VERSION.encode())
    return h.hexdigest()[:20]


def _kconfig_lines():
    """CONFIG_* from /proc/config.gz or /boot/config-$(uname -r)."""
    rel = os.uname().release
    src = None
    for p in ("/proc/config.gz", "/boot/config-" + rel):
        if os.path.exists(p):
            src = p
            break
    lines = []
    if src:
        op = gzip.open if src.endswith(".gz") else open
        with op(src, "rt") as f:
            for ln in f:
                m = re.match(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$", ln.strip())
                if not m:
                    continue
                k, v = m.groups()
                if v == "y":
                    lines.append("#define %s 1" % k)
                elif v == "m":
                    lines.append("#define %s_MODULE 1" % k)
                elif v.startswith('"') or re.match(r"^-?(0x[0-9a-fA-F]+|\d+)$", v):
                    lines.append("#define %s %s" % (k, v))
    else:
        # no config available: the minimum BCC's helpers.h needs
        lines.append("#define CONFIG_BPF_SYSCALL 1")
        if _kernel_arch() in ("x86", "arm64"):
            lines.append("#define CONFIG_ARCH_HAS_SYSCALL_WRAPPER 1")
    return src, lines


def _linux_version_code():
    nums = re.findall(r"\d+", os.uname().release)[:3]
    a, b, c = (list(map(int, nums)) + [0, 0, 0])[:3]
    return (a << 16) + (b << 8) + min(c, 255)


def _split_chunks(text):
    """bpftool's C dump: one top-level declaration per blank-line separated
    chunk; returns list of [start_line(1-based), lines]."""
    out = []
    lines = text.split("\n")
    cur, start = [], None
    for i, ln in enumerate(lines, 1):
        if ln == "":
            if cur:
                out.append([start, cur])
                cur = []
            continue
        if not cur:
            start = i
        cur.append(ln)
    if cur:
        out.append([start, cur])
    return out


def _identifiers(text):
    return set(re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", text))


def _compile_probe(tree, prog=PROBE_PROG, timeout=600):
    """Compile PROG with BCC in a child process; return (ok, stderr)."""
    env = dict(os.environ, BCC_KERNEL_SOURCE=tree)
    code = ("import sys\nfrom bcc import BPF\n"
            "b = BPF(text=sys.stdin.read(), cflags=['-ferror-limit=0'])\n"
            "print('COMPILED_OK')\n")
    r = subprocess.run([sys.executable, "-c", code], input=prog, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return ("COMPILED_OK" in r.stdout), r.stderr


_DIAG = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): "
                   r"(?P<sev>error|fatal error): (?P<msg>.*)$", re.M)


# ---------------------------------------------------------------- builder
def build_tree(dest, btf_path=BTF_PATH, verbose=False, max_iter=30):
    """Create the fake kernel tree in directory `dest` (must not exist)."""
    t0 = time.time()
    arch = _kernel_arch()
    inc = os.path.join(dest, "include")
    ainc = os.path.join(dest, "arch", arch, "include")
    os.makedirs(inc)
    os.makedirs(ainc)
    for d in ("arch/%s/include/generated" % arch, "arch/%s/include/uapi" % arch,
              "arch/%s/include/generated/uapi" % arch, "include/uapi",
              "include/generated/uapi"):
        os.makedirs(os.path.join(dest, d), exist_ok=True)

    # 1. vmlinux.h from BTF
    raw = subprocess.run(["bpftool", "btf", "dump", "file", btf_path, "format", "c"],
                         check=True, capture_output=True, text=True).stdout
    btf_types = _btf_types(btf_path)
    raw, enum_fixed = _fix_enum_sizes(raw, btf_types)
    raw, nsplit = _split_padding_runs(raw)
    _log(verbose, "zero-width barriers inserted after %d 'long: 64;' paddings" % nsplit)
    _log(verbose, "enums given a mode() attribute to match BTF size: %s" % enum_fixed)
    _write(os.path.join(dest, "vmlinux_raw.h"), raw)
    chunks = _split_chunks(raw)
    vm_idents = _identifiers(raw)

    # 2. kconfig.h + generated/autoconf.h
    cfg_src, cfg = _kconfig_lines()
    _write(os.path.join(inc, "generated", "autoconf.h"),
           "/* generated by bcc_btf.py from %s */\n" % cfg_src + "\n".join(cfg) + "\n")
    _write(os.path.join(inc, "linux", "kconfig.h"),
           "#ifndef __BCC_BTF_KCONFIG_H\n#define __BCC_BTF_KCONFIG_H\n"
           "#include <generated/autoconf.h>\n"
           "/* no CO-RE: BCC does not relocate, and the offsets already match */\n"
           "#define BPF_NO_PRESERVE_ACCESS_INDEX 1\n"
           "#define __BCC_BTF_FAKE_TREE 1\n" + KCONFIG_MACROS +
           "#endif\n")

    # 3. linux/types.h: only what BCC's bpf.h needs before vmlinux.h is seen
    basic = ["__s8", "__u8", "__s16", "__u16", "__s32", "__u32", "__s64", "__u64",
             "__be16", "__le16", "__be32", "__le32", "__be64", "__le64",
             "__wsum", "__sum16", "__poll_t"]
    tdefs = {}
    for _, lns in chunks:
        m = re.match(r"^typedef [^{;]* (\w+);$", lns[0]) if len(lns) == 1 else None
        if m and m.group(1) in basic:
            tdefs[m.group(1)] = lns[0]
    types_h = ["#ifndef __BCC_BTF_TYPES_H", "#define __BCC_BTF_TYPES_H"]
    for n in basic:                      # keep dependency order of `basic`
        if n in tdefs:
            types_h.append(tdefs[n])
    types_h += [
        "#define __bitwise",
        "#define __aligned_u64 __u64 __attribute__((aligned(8)))",
        "#define __aligned_be64 __be64 __attribute__((aligned(8)))",
        "#define __aligned_le64 __le64 __attribute__((aligned(8)))",
        "#endif"]
    _write(os.path.join(inc, "linux", "types.h"), "\n".join(types_h) + "\n")
    _write(os.path.join(inc, "uapi", "linux", "types.h"), "#include <linux/types.h>\n")
    _write(os.path.join(inc, "linux", "bpf_common.h"), BPF_COMMON_H)
    _write(os.path.join(inc, "uapi", "linux", "bpf_common.h"), BPF_COMMON_H)

    # 4. headers helpers.h includes after BCC's bpf.h -> pull in vmlinux
    vinc = "#include <bcc_vmlinux.h>\n"
    _write(os.path.join(inc, "uapi", "linux", "bpf.h"), vinc)
    _write(os.path.join(inc, "uapi", "linux", "if_packet.h"), vinc)
    _write(os.path.join(inc, "linux", "log2.h"), vinc)
    _write(os.path.join(inc, "linux", "version.h"),
           "#ifndef __BCC_BTF_VERSION_H\n#define __BCC_BTF_VERSION_H\n"
           "#define LINUX_VERSION_CODE %d\n"
           "#define KERNEL_VERSION(a,b,c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))\n"
           "#endif\n" % _linux_version_code())
    page = os.sysconf("SC_PAGE_SIZE")
    _write(os.path.join(ainc, "asm", "page.h"),
           "#ifndef __BCC_BTF_PAGE_H\n#define __BCC_BTF_PAGE_H\n"
           "#define PAGE_SHIFT %d\n#define PAGE_SIZE %dUL\n"
           "#define PAGE_MASK (~(PAGE_SIZE-1))\n#endif\n" % (page.bit_length() - 1, page))
    for s in COMMON_STUBS:
        p = os.path.join(inc, s)
        if not os.path.exists(p):
            _write(p, vinc)

    # 5. compat macros that BTF cannot carry (macros), after vmlinux
    compat = ["/* macros that are not in BTF; generated by bcc_btf.py */",
              "#ifndef NULL", "#define NULL ((void *)0)", "#endif",
              "#ifndef offsetof",
              "#define offsetof(TYPE, MEMBER) __builtin_offsetof(TYPE, MEMBER)",
              "#endif"]
    # kernel compiler_types.h / compiler.h / kernel.h macros BCC programs use
    for name, val in (("__always_inline", "inline __attribute__((always_inline))"),
                      ("noinline", "__attribute__((noinline))"),
                      ("__packed", "__attribute__((packed))"),
                      ("__aligned(x)", "__attribute__((aligned(x)))"),
                      ("__maybe_unused", "__attribute__((unused))"),
                      ("likely(x)", "__builtin_expect(!!(x), 1)"),
                      ("unlikely(x)", "__builtin_expect(!!(x), 0)"),
                      ("barrier()", "asm volatile(\"\" ::: \"memory\")"),
                      ("ARRAY_SIZE(a)", "(sizeof(a) / sizeof((a)[0]))"),
                      ("container_of(ptr, type, member)",
                       "((type *)((void *)(ptr) - offsetof(type, member)))"),
                      ("__user", ""), ("__kernel", ""), ("__force", ""), ("__iomem", ""),
                      ("__rcu", ""), ("__percpu", ""), ("__must_check", "")):
        compat.append("#ifndef %s\n#define %s %s\n#endif" % (name.split("(")[0], name, val))

    def add_consts(pairs):
        for k, v in sorted(pairs):
            if k not in vm_idents:   # never shadow an identifier of vmlinux.h
                compat.append("#ifndef %s\n#define %s %d\n#endif" % (k, k, v))

    add_consts((n, c) for c, n in _errno.errorcode.items())
    add_consts((s.name, int(s)) for s in _signal.Signals
               if not s.name.startswith("SIG_") and not s.name.startswith("SIGRT"))
    add_consts((n, int(getattr(_socket, n))) for n in dir(_socket)
               if re.match(r"^(AF|SOCK)_[A-Z0-9_]+$", n) and isinstance(getattr(_socket, n), int))
    # helpers.h (included right after) defines bpf_ntohs()/bpf_htons()/...
    for f in ("ntohs", "htons", "ntohl", "htonl"):
        compat.append("#ifndef %s\n#define %s(x) bpf_%s(x)\n#endif" % (f, f, f))

    wrapper = ("#ifndef __BCC_BTF_VMLINUX_H\n#define __BCC_BTF_VMLINUX_H\n"
               "#include \"%s\"\n#include \"bcc_btf_compat.h\"\n"
               "#endif\n" % VMLINUX_NAME)
    _write(os.path.join(inc, "bcc_vmlinux.h"), wrapper)
    _write(os.path.join(inc, "bcc_btf_compat.h"), "\n".join(compat) + "\n")

    # 6. filter loop: drop what BCC's own bpf.h already defined
    body_path = os.path.join(inc, VMLINUX_NAME)
    dropped_chunks = set()            # chunk index
    dropped_lines = set()             # absolute line numbers (enumerators)
    line2chunk = {}
    for ci, (start, lns) in enumerate(chunks):
        for j in range(len(lns)):
            line2chunk[start + j] = ci
    removed_log = []

    def render():
        out, newmap = [], {}
        n = 0
        for ci, (start, lns) in enumerate(chunks):
            if ci in dropped_chunks:
                continue
            keep = [(start + j, l) for j, l in enumerate(lns) if start + j not in dropped_lines]
            if lns[0].startswith("enum") and lns[-1].startswith("}"):
                if not any(re.match(r"^\t\w+ = ", l) for _, l in keep):
                    continue                   # enum left without enumerators
            for absno, l in keep:
                out.append(l)
                n += 1
                newmap[n] = absno
            out.append("")
            n += 1
        return "\n".join(out) + "\n", newmap

    ok, err = False, ""
    for it in range(1, max_iter + 1):
        body, newmap = render()
        _write(body_path, body)
        t1 = time.time()
        ok, err = _compile_probe(dest)
        diags = [m for m in _DIAG.finditer(err)]
        _log(verbose, "iteration %d: compile %.1fs, ok=%s, %d errors"
             % (it, time.time() - t1, ok, len(diags)))
        if ok:
            break
        progress = False
        foreign = []
        for m in diags:
            if os.path.basename(m.group("file")) != VMLINUX_NAME:
                foreign.append(m.group(0))
                continue
            absno = newmap.get(int(m.group("line")))
            if absno is None:
                continue
            ci = line2chunk[absno]
            start, lns = chunks[ci]
            msg = m.group("msg")
            is_enum = lns[0].startswith("enum")
            if ci in dropped_chunks:
                continue
            if is_enum and absno != start and re.match(r"^\t\w+ = ", lns[absno - start]):
                if absno not in dropped_lines:
                    dropped_lines.add(absno)
                    removed_log.append(("enumerator", lns[absno - start].strip(), msg))
                    progress = True
            elif ci not in dropped_chunks:
                dropped_chunks.add(ci)
                removed_log.append(("chunk", lns[0][:80] if len(lns) > 1 else lns[0], msg))
                progress = True
        if not progress:
            raise RuntimeError("bcc_btf: cannot fix errors outside vmlinux.h:\n"
                               + "\n".join(foreign[:30]) + "\n" + err[-4000:])
    if not ok:
        raise RuntimeError("bcc_btf: still failing after %d iterations:\n%s"
                           % (max_iter, err[-6000:]))

    # 7. layout check (build time only): every uniquely named struct/union of
    #    BTF must have the BTF size and BTF member offsets in what BCC compiles.
    #    Types that BCC's bundled bpf.h owns (dropped above) may legitimately
    #    differ (BCC's copy of the uapi header is older); they are reported,
    #    and it is an error only if a kept kernel type embeds one by value.
    t2 = time.time()
    check = _layout_check_program(btf_types)
    ok2, err2 = _compile_probe(dest, check)
    failed = set(re.findall(r"bcc_btf_layout:(\w+ \w+)", err2))
    dropped_tags = set()
    for ci in dropped_chunks:
        m = re.match(r"^(struct|union) (\w+) \{", chunks[ci][1][0])
        if m:
            dropped_tags.add("%s %s" % m.groups())
    bad = sorted(failed - dropped_tags)
    mismatched_uapi = sorted(failed & dropped_tags)
    _log(verbose, "layout check: %d asserts, %.1fs, uapi mismatches (BCC's older "
         "bpf.h wins): %s" % (check.count("_Static_assert"), time.time() - t2,
                              mismatched_uapi))
    if bad or (not ok2 and not failed):
        raise RuntimeError("bcc_btf: layout check failed for %s\n%s" % (bad, err2[-4000:]))

    # 8. IR check (build time only): BCC lowers C to LLVM IR for the host
    #    (x86_64) and then codegens with the BPF datalayout.  Integer types
    #    wider than 64 bits are 8-aligned in the first and 16-aligned in the
    #    second, so any struct whose IR type holds one (typically a merged
    #    bitfield run) gets member offsets different from offsetof().  Compile
    #    one pointer use of every struct, dump the IR and look for iN, N > 64
    #    (i128 from a real __int128 member is fine: clang pads it explicitly).
    t3 = time.time()
    wide = _ir_wide_int_types(dest, btf_types, dropped_tags)
    _log(verbose, "IR check: %.1fs, struct types with iN>64 (bitfield runs): %s"
         % (time.time() - t3, wide or "none"))
    if wide:
        raise RuntimeError("bcc_btf: IR types with wide bitfield storage (offsets would be "
                           "wrong): %s; use cflags=['-ffine-grained-bitfield-accesses']" % wide[:20])

    info = {
        "btf": btf_path, "kernel": os.uname().release, "libbcc": _libbcc_path(),
        "config": cfg_src, "iterations": it, "dropped_chunks": len(dropped_chunks),
        "dropped_enumerators": len(dropped_lines), "enums_resized": enum_fixed, "padding_barriers": nsplit,
        "layout_asserts": check.count("_Static_assert"), "ir_wide_int_types": wide,
        "uapi_types_differing_from_kernel": mismatched_uapi,
        "build_seconds": round(time.time() - t0, 2),
        "removed": removed_log,
    }
    _write(os.path.join(dest, "bcc_btf.json"), json.dumps(info, indent=1))
    os.remove(os.path.join(dest, "vmlinux_raw.h"))
    return info


def _btf_types(btf_path):
    r = subprocess.run(["bpftool", "-j", "btf", "dump", "file", btf_path],
                       check=True, capture_output=True, text=True).stdout
    return json.loads(r)["types"]


_MODE = {1: "byte", 2: "HI", 4: "SI", 8: "DI"}


def _fix_enum_sizes(raw, types):
    """bpftool < 7.2 (libbpf < 1.2) dumps `enum foo {..} __packed` (BTF size 1)
    as a plain enum, which clang makes 4 bytes -> every later member of e.g.
    struct inode gets a wrong offset.  Add __attribute__((mode(..))) to every
    named enum whose BTF size differs from what clang would pick."""
    want = {}
    for t in types:
        if t["kind"] not in ("ENUM", "ENUM64") or t["name"] == "(anon)":
            continue
        if t["kind"] == "ENUM":      # 32-bit values (bpftool -j sign-extends them)
            natural = 4
        else:
            vals = [int(v["val"]) for v in t.get("values", [])]
            natural = 4 if all(-2**31 <= v < 2**32 for v in vals) else 8
        if t["size"] != natural and t["size"] in _MODE:
            want[t["name"]] = t["size"]
    fixed = []

    def repl(m):
        name = m.group(1)
        if name in want and "__attribute__" not in m.group(3):
            fixed.append(name)
            return "enum %s {%s} __attribute__((mode(%s)));" % (name, m.group(2), _MODE[want[name]])
        return m.group(0)
    raw = re.sub(r"^enum (\w+) \{(\n.*?\n)\}([^;\n]*);$", repl, raw, flags=re.M | re.S)
    return raw, sorted(fixed)


def _split_padding_runs(raw):
    """bpftool pads with runs of unnamed `long: 64;` bitfields.  Clang (non
    fine-grained bitfield mode) stores such a run as ONE wide integer (e.g.
    i448); BCC builds the IR for x86_64 (LLVM 14: i64:64, no i128 entry) but
    codegens with the BPF datalayout (i128:128), where that integer becomes
    16-byte aligned -> every later member access is shifted (bcc#4890).
    A zero-width `long: 0;` after each `long: 64;` is a layout no-op (we are
    on an 8-byte boundary there, and on x86-64 unnamed bit-fields do not
    affect alignment) but ends clang's bitfield run, so each pad becomes i64."""
    n = [0]

    def repl(m):
        n[0] += 1
        return "%slong: 64;\n%slong: 0;" % (m.group(1), m.group(1))
    raw = re.sub(r"^(\t+)long: 64;$", repl, raw, flags=re.M)
    return raw, n[0]


def _ir_wide_int_types(tree, types, skip_tags):
    count, has_i128 = {}, set()
    byid = {t["id"]: t for t in types}
    for t in types:
        if t["kind"] in ("STRUCT", "UNION", "ENUM", "ENUM64"):
            count[t["name"]] = count.get(t["name"], 0) + 1
    lines = []
    for t in types:
        if t["kind"] not in ("STRUCT", "UNION") or t["name"] == "(anon)" or count[t["name"]] != 1:
            continue
        tag = "%s %s" % (t["kind"].lower(), t["name"])
        if tag in skip_tags:
            continue
        lines.append("  s += (u64)(((%s *)b) + 1);" % tag)
        for m in t.get("members", []):
            mt = byid.get(m["type_id"])
            while mt and mt["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "ARRAY"):
                mt = byid.get(mt.get("type_id") or mt.get("elem_type_id"))
            if mt and mt["kind"] == "INT" and mt.get("size") == 16:
                has_i128.add("%s.%s" % (t["kind"].lower(), t["name"]))
    prog = ("int bcc_btf_irscan(void *ctx) {\n  u64 b = bpf_get_current_task(), s = 0;\n%s\n"
            "  return s;\n}\n" % "\n".join(lines))
    env = dict(os.environ, BCC_KERNEL_SOURCE=tree)
    code = "import sys\nfrom bcc import BPF\nBPF(text=sys.stdin.read(), debug=0x1)\n"
    r = subprocess.run([sys.executable, "-c", code], input=prog, env=env,
                       capture_output=True, text=True, timeout=900)
    ir = r.stdout + r.stderr
    if "target datalayout" not in ir:
        raise RuntimeError("bcc_btf: IR check did not compile:\n" + ir[-3000:])
    bad = []
    for m in re.finditer(r"^%((?:struct|union)\.[\w.]+) = type (<?\{.*\}>?)$", ir, re.M):
        widths = set(int(x) for x in re.findall(r"\bi(\d+)\b", m.group(2)) if int(x) > 64)
        if not widths:
            continue
        name = re.sub(r"\.\d+$", "", m.group(1))
        if widths == {128} and (name in has_i128 or ".anon" in name):
            continue       # a genuine __int128 member
        bad.append(m.group(1))
    return sorted(bad)


def _layout_check_program(types):
    """_Static_assert(sizeof) and _Static_assert(offsetof) for every uniquely
    named struct/union in BTF (non-bitfield, named members only)."""
    count = {}
    for t in types:
        if t["kind"] in ("STRUCT", "UNION", "ENUM", "ENUM64"):
            count[t["name"]] = count.get(t["name"], 0) + 1
    out = []
    for t in types:
        if t["kind"] not in ("STRUCT", "UNION") or t["name"] == "(anon)":
            continue
        if count[t["name"]] != 1:
            continue       # bpftool renames duplicates (foo___2); skip them
        tag = "%s %s" % (t["kind"].lower(), t["name"])
        out.append('_Static_assert(sizeof(%s) == %d, "bcc_btf_layout:%s");'
                   % (tag, t["size"], tag))
        for m in t.get("members", []):
            if m["name"] == "(anon)" or m.get("bitfield_size") or m["bits_offset"] % 8:
                continue
            out.append('_Static_assert(__builtin_offsetof(%s, %s) == %d, "bcc_btf_layout:%s");'
                       % (tag, m["name"], m["bits_offset"] // 8, tag))
    return "\n".join(out) + "\nint bcc_btf_layout_check(void *ctx) { return 0; }\n"


def ensure_tree(cache_dir=DEFAULT_CACHE, btf_path=BTF_PATH, verbose=False,
                set_env=True):
    """Return the path of a fake kernel tree for the running kernel, building
    it if needed.  Idempotent; cached under cache_dir/<hash of BTF+libbcc>.
    Sets BCC_KERNEL_SOURCE (BCC reads it at every BPF() call)."""
    key = cache_key(btf_path)
    final = os.path.join(cache_dir, key)
    if not os.path.exists(os.path.join(final, "bcc_btf.json")):
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=key + ".tmp-", dir=cache_dir)
        try:
            shutil.rmtree(tmp)
            info = build_tree(tmp, btf_path, verbose=verbose)
            try:
                os.rename(tmp, final)          # atomic; loser of a race cleans up
            except OSError:
                if not os.path.exists(os.path.join(final, "bcc_btf.json")):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
            _log(verbose, "built %s in %.1fs" % (final, info["build_seconds"]))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    else:
        _log(verbose, "cache hit", final)
    if set_env:
        os.environ["BCC_KERNEL_SOURCE"] = final
    return final


TINY_TYPES = r"""
#ifndef __BCC_TINY_TYPES_H
#define __BCC_TINY_TYPES_H
typedef signed char __s8;          typedef unsigned char __u8;
typedef short __s16;               typedef unsigned short __u16;
typedef int __s32;                 typedef unsigned int __u32;
typedef long long __s64;           typedef unsigned long long __u64;
typedef __s8 s8;   typedef __u8 u8;   typedef __s16 s16; typedef __u16 u16;
typedef __s32 s32; typedef __u32 u32; typedef __s64 s64; typedef __u64 u64;
typedef __u16 __be16; typedef __u32 __be32; typedef __u64 __be64;
typedef __u16 __le16; typedef __u32 __le32; typedef __u64 __le64;
typedef __u16 __sum16; typedef __u32 __wsum; typedef unsigned int __poll_t;
#define __aligned_u64 __u64 __attribute__((aligned(8)))
#define __aligned_be64 __be64 __attribute__((aligned(8)))
#define __aligned_le64 __le64 __attribute__((aligned(8)))
#define __bitwise
typedef _Bool bool;
enum { false = 0, true = 1 };
/* scalar types that appear in tracepoint format files */
typedef int pid_t; typedef unsigned int uid_t; typedef unsigned int gid_t;
typedef unsigned short umode_t; typedef unsigned long size_t; typedef long ssize_t;
typedef long long loff_t; typedef unsigned int dev_t; typedef unsigned long ino_t;
typedef int clockid_t; typedef long time64_t; typedef unsigned int gfp_t;
typedef int key_t; typedef int mqd_t; typedef int timer_t; typedef unsigned long sector_t;
typedef unsigned int fmode_t; typedef unsigned long uintptr_t; typedef long intptr_t;
typedef unsigned int qid_t; typedef int rwf_t; typedef unsigned short sa_family_t;
struct pt_regs;
#endif
"""


def build_tiny_tree(dest):
    """Question 4: a tree with NO vmlinux.h at all - only what BCC's own
    headers need.  Enough for tracepoint args, maps, ring buffers and
    helpers; no kernel struct can be dereferenced."""
    arch = _kernel_arch()
    inc = os.path.join(dest, "include")
    cfg_src, cfg = _kconfig_lines()
    _write(os.path.join(inc, "generated", "autoconf.h"), "\n".join(cfg) + "\n")
    _write(os.path.join(inc, "linux", "kconfig.h"),
           "#include <generated/autoconf.h>\n" + KCONFIG_MACROS)
    _write(os.path.join(inc, "linux", "types.h"), TINY_TYPES)
    _write(os.path.join(inc, "linux", "bpf_common.h"), BPF_COMMON_H)
    for f in ("uapi/linux/bpf.h", "uapi/linux/if_packet.h", "linux/log2.h"):
        _write(os.path.join(inc, f), "\n")
    _write(os.path.join(inc, "linux", "version.h"),
           "#define LINUX_VERSION_CODE %d\n"
           "#define KERNEL_VERSION(a,b,c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))\n"
           % _linux_version_code())
    page = os.sysconf("SC_PAGE_SIZE")
    _write(os.path.join(dest, "arch", arch, "include", "asm", "page.h"),
           "#define PAGE_SIZE %dUL\n" % page)
    return dest


_VIRTUAL = {"bcc/proto.h", "bcc/helpers.h", "bcc/bpf.h", "bcc/bpf_workaround.h",
            "bcc/footer.h", "stdarg.h"}


def fix_includes(text, tree):
    """Comment out #include <...> lines that neither the fake tree nor BCC's
    virtual headers can satisfy (the types come from BTF anyway)."""
    arch = _kernel_arch()
    dirs = [os.path.join(tree, d) for d in
            ("include", "arch/%s/include" % arch, "include/uapi",
             "arch/%s/include/uapi" % arch)]

    def repl(m):
        name = m.group(2)
        if name in _VIRTUAL or any(os.path.exists(os.path.join(d, name)) for d in dirs):
            return m.group(0)
        return "/* bcc_btf: dropped %s */" % m.group(0).strip()
    return re.sub(r"^([ \t]*#[ \t]*include[ \t]*<([^>]+)>.*)$", repl, text, flags=re.M)


def load(text, **kw):
    """bcc.BPF(text=...) on a header-less kernel."""
    tree = ensure_tree()
    from bcc import BPF
    return BPF(text=fix_includes(text, tree), **kw)


if __name__ == "__main__":
    t = time.time()
    p = ensure_tree(verbose=True)
    print(p, "%.2fs" % (time.time() - t))
