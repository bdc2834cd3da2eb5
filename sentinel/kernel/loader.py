"""Compile and load sentinel's BPF object: the one function that turns bpf/*.c into a bcc.BPF.

Kernel differences are handled by SENTINEL_HAVE_* macros that sentinel.kernel.headers
probes from the running kernel's BTF (never from its version) and passes as cflags, so the
same C builds on kernels with real headers (Debian 6.1) and on header-less ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sentinel.errors import KernelError
from sentinel.kernel import probe
from sentinel.log import get_logger

log = get_logger("sentinel.kernel.loader")

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
# bpf/ sits beside the package in a checkout and under /usr/share in a .deb install.
_BPF_DIR_CANDIDATES = (_PACKAGE_DIR.parent / "bpf", Path("/usr/share/sentinel/bpf"))
# The BPF sources compiled into sentinel's one object (they share maps and the ring buffer).
# The shared helpers come first and are part of the main text, not #included: bcc rewrites
# map calls (`map.lookup()`) and finds programs only in its main file.
SOURCES = ("include/sentinel_common.h", "process.bpf.c")


def bpf_dir() -> Path:
    for candidate in _BPF_DIR_CANDIDATES:
        if (candidate / "include" / "sentinel_events.h").is_file():
            return candidate
    raise KernelError("BPF sources not found (looked in %s)" % ", ".join(map(str, _BPF_DIR_CANDIDATES)))


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
    try:
        probe.ensure_kernel_filesystems()  # bcc attaches tracepoints through tracefs
    except OSError as exc:
        raise KernelError("cannot mount the kernel filesystems BPF needs: %s" % exc) from None
    directory = bpf_dir()
    cflags = (
        "-I%s" % (directory / "include"),
        "-I%s" % directory,
        "-Wno-unused-function",
        *("-D%s=%d" % item for item in sorted((defines or {}).items())),
    )
    text = compose_sources(sources, directory)
    started = time.monotonic()
    bpf = compile_text(text, cflags)
    elapsed = time.monotonic() - started
    log.debug("bpf.compiled", sources=sources, seconds=round(elapsed, 3))
    return LoadedObject(bpf=bpf, compile_seconds=elapsed, cflags=cflags)


def compile_text(text: str, cflags: tuple[str, ...] | list[str]):
    """bcc.BPF(text=...) through sentinel.kernel.headers (real headers or the BTF tree, plus
    the SENTINEL_HAVE_* feature macros); bcc's bare exceptions become KernelError."""
    from sentinel.kernel import headers

    try:
        return headers.load_bpf(text, cflags=list(cflags))
    except KernelError:
        raise
    except Exception as exc:  # bcc raises bare Exception on compile/load failure
        raise KernelError("BPF program failed to compile or load: %s" % exc) from None
