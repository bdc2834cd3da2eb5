"""The README's "Installing" section names targets, files and build arguments that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def installing_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Installing\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.M))
    named = set(re.findall(r"`?make ([a-z][\w-]*)", installing_section()))
    assert named and named <= targets


def test_repository_paths_exist():
    paths = set(re.findall(r"\b((?:packaging|tests)/[\w./-]*\w)", installing_section()))
    assert paths and [p for p in paths if not (REPO / p).exists()] == []


def test_installed_paths_are_the_packaged_ones(built_deb):
    """Paths under /etc, /usr and /lib are in the package; those under /var are the ones
    the unit creates and purge removes."""
    listing = subprocess.run(["dpkg-deb", "-c", str(built_deb)], capture_output=True, text=True, check=True).stdout
    packaged = {line.split()[5].removeprefix(".").rstrip("/") for line in listing.splitlines()}
    postrm = (REPO / "packaging/deb/postrm").read_text()
    named = set(re.findall(r"`(/(?:etc|usr|lib|var)/[^`]*?)/?`", installing_section()))
    assert named
    assert [p for p in named if not p.startswith("/var/") and p not in packaged] == []
    purged = set(re.findall(r"/var/\S+", postrm))
    assert [p for p in named if p.startswith("/var/") and not {p, p.rsplit("/", 1)[0]} & purged] == []


def test_container_build_argument_is_the_containerfiles():
    containerfile = (REPO / "packaging/container/Containerfile").read_text()
    for argument in re.findall(r"--build-arg (\w+)=", installing_section()):
        assert re.search(r"^ARG %s\b" % argument, containerfile, flags=re.M)
