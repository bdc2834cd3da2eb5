"""The BPF C against the real headers of another kernel installed on this machine.

Debian's split header packages (linux-headers-<ver>-common + -<arch>) are what the agent
compiles against on a stock Debian host. No SENTINEL_HAVE_* macro is passed, so the
conservative branches (older kernels' layouts) are the ones compiled. Where no other
kernel's headers are installed there is nothing to compile against, and the test says so.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from sentinel.kernel import loader

COMPILE = """
import os, sys
from bcc import BPF
from bcc.libbcc import lib
b = BPF(text=sys.stdin.read(), cflags=sys.argv[1:])
print(" ".join(sorted(lib.bpf_function_name(b.module, i).decode() for i in range(lib.bpf_num_functions(b.module)))))
"""


ARCH = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def _other_header_trees() -> list[tuple[str, str]]:
    trees = []
    running = os.uname().release
    for common in sorted(glob.glob("/usr/src/linux-headers-*-common")):
        prefix = common[: -len("-common")]
        for arch in glob.glob(prefix + "-*"):
            if arch != common and not arch.endswith(running) and os.path.isdir(os.path.join(arch, "include/generated")):
                trees.append((common, arch))
    return trees


_NONE = pytest.param("", "", marks=pytest.mark.skip(reason="no other kernel's headers installed under /usr/src"))


@pytest.mark.parametrize("common, arch", _other_header_trees() or [_NONE])
def test_compiles_against_real_headers(common, arch):
    directory = loader.bpf_dir()
    cflags = [
        "-I%s/include" % arch,
        "-I%s/include/generated/uapi" % arch,
        "-I%s/arch/%s/include/generated" % (arch, ARCH),
        "-I%s/arch/%s/include/generated/uapi" % (arch, ARCH),
        "-I%s" % (directory / "include"),
        "-I%s" % directory,
        "-Wno-unused-function",
        *("-D%s=%d" % item for item in loader.private_layout_defines().items()),
    ]
    result = subprocess.run(
        [sys.executable, "-c", COMPILE, *cflags],
        input=loader.compose_sources(loader.SOURCES, directory),
        capture_output=True,
        text=True,
        env=dict(os.environ, BCC_KERNEL_SOURCE=common),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from sentinel.sensor import PROGRAMS

    assert set(result.stdout.split()) == {p.name for p in PROGRAMS}
