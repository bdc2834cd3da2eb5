"""Compile and load sentinel's BPF object: the one function that turns bpf/*.c into a bcc.BPF.

Kernel differences are handled by SENTINEL_HAVE_* macros probed from the running kernel's
BTF (never from its version) and passed as cflags, so the same C builds on kernels with real
headers (Debian 6.1) and on header-less ones through the BTF header tree.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sentinel.errors import KernelError
from sentinel.log import get_logger

log = get_logger("sentinel.kernel.loader")

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
# bpf/ sits beside the package in a checkout and under /usr/share in a .deb install.
_BPF_DIR_CANDIDATES = (_PACKAGE_DIR.parent / "bpf", Path("/usr/share/sentinel/bpf"))
BTF_PATH = "/sys/kernel/btf/vmlinux"
TRACEFS = "/sys/kernel/tracing"
# The BPF sources compiled into sentinel's one object (they share maps and the ring buffer).
# The shared helpers come first and are part of the main text, not #included: bcc rewrites
# map calls (`map.lookup()`) and finds programs only in its main file.
SOURCES = ("include/sentinel_common.h", "process.bpf.c")

# macro -> (struct, member): defined when the running kernel's struct has that member.
FEATURE_MEMBERS = {
    "SENTINEL_HAVE_BPRM_EXECUTABLE": ("linux_binprm", "executable"),
    "SENTINEL_HAVE_INODE_TIME_SEC": ("inode", "i_mtime_sec"),
    "SENTINEL_HAVE_INODE___I_CTIME": ("inode", "__i_ctime"),
    "SENTINEL_HAVE_TASK_LOGINUID": ("task_struct", "loginuid"),
}
# macro -> struct: defined when the struct exists in vmlinux BTF (not in a module).
FEATURE_STRUCTS = {
    "SENTINEL_HAVE_OVL_INODE": "ovl_inode",
}


def bpf_dir() -> Path:
    for candidate in _BPF_DIR_CANDIDATES:
        if (candidate / "include" / "sentinel_events.h").is_file():
            return candidate
    raise KernelError("BPF sources not found (looked in %s)" % ", ".join(map(str, _BPF_DIR_CANDIDATES)))


def _struct_bodies(c_dump: str, names: set[str]) -> dict[str, str]:
    bodies = {}
    for match in re.finditer(r"^struct (\w+) \{\n(.*?)^\};", c_dump, re.M | re.S):
        if match.group(1) in names:
            bodies[match.group(1)] = match.group(2)
    return bodies


@functools.lru_cache(maxsize=1)
def feature_cflags(btf_path: str = BTF_PATH) -> tuple[str, ...]:
    """-D flags for the kernel features the C code branches on, probed from BTF."""
    try:
        dump = subprocess.run(
            ["bpftool", "btf", "dump", "file", btf_path, "format", "c"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise KernelError("cannot read kernel BTF with bpftool: %s" % exc) from None
    wanted = {struct for struct, _ in FEATURE_MEMBERS.values()} | set(FEATURE_STRUCTS.values())
    bodies = _struct_bodies(dump, wanted)
    flags = []
    for macro, (struct, member) in FEATURE_MEMBERS.items():
        if re.search(r"[\s*]%s(\[\d*\])?(:\s*\d+)?;" % re.escape(member), bodies.get(struct, "")):
            flags.append("-D%s=1" % macro)
    for macro, struct in FEATURE_STRUCTS.items():
        if struct in bodies:
            flags.append("-D%s=1" % macro)
    return tuple(flags)


def ensure_tracefs() -> None:
    """bcc attaches tracepoints through tracefs; mount it when the host has not."""
    if os.path.isdir(os.path.join(TRACEFS, "events")):
        return
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], capture_output=True, text=True)
    if result.returncode != 0 and not os.path.isdir(os.path.join(TRACEFS, "events")):
        raise KernelError("cannot mount tracefs on %s: %s" % (TRACEFS, result.stderr.strip()))


@dataclass(frozen=True)
class LoadedObject:
    bpf: object  # bcc.BPF
    compile_seconds: float
    cflags: tuple[str, ...]


def compose_sources(sources: tuple[str, ...], directory: Path) -> str:
    """One compilation unit from several bpf/*.bpf.c files.

    bcc only rewrites map calls and finds programs in its main file (not in #included
    files), so the files are joined; `#line` keeps compiler errors pointing at the real file.
    """
    parts = []
    for source in sources:
        path = directory / source
        parts.append('#line 1 "%s"\n%s' % (path, path.read_text()))
    return "\n".join(parts)


def load_object(sources: tuple[str, ...] = SOURCES, defines: dict[str, int] | None = None) -> LoadedObject:
    """Compile bpf/<sources> as one object with the feature macros and `defines`.

    Nothing is attached: the sensor attaches the programs its interest needs.
    """
    ensure_tracefs()
    directory = bpf_dir()
    cflags = (
        "-I%s" % (directory / "include"),
        "-I%s" % directory,
        "-Wno-unused-function",
        *feature_cflags(),
        *("-D%s=%d" % item for item in sorted((defines or {}).items())),
    )
    text = compose_sources(sources, directory)
    started = time.monotonic()
    bpf = compile_text(text, cflags)
    elapsed = time.monotonic() - started
    log.debug("bpf.compiled", sources=sources, seconds=round(elapsed, 3))
    return LoadedObject(bpf=bpf, compile_seconds=elapsed, cflags=cflags)


def compile_text(text: str, cflags: tuple[str, ...] | list[str]):
    """bcc.BPF(text=...) with real headers when the kernel has them, else the BTF tree."""
    from sentinel.kernel import headers

    try:
        if hasattr(headers, "load_bpf"):
            return headers.load_bpf(text, cflags=list(cflags))
        tree = None
        if not os.path.isdir("/lib/modules/%s/build" % os.uname().release):
            tree = headers.ensure_tree()
            text = headers.fix_includes(text, tree)
        import bcc

        return bcc.BPF(text=text, cflags=list(cflags))
    except KernelError:
        raise
    except Exception as exc:  # bcc raises bare Exception on compile/load failure
        raise KernelError("BPF program failed to compile or load: %s" % exc) from None
