"""The .deb as built by packaging/deb/build.sh (what `make deb` runs), inspected with
dpkg-deb: control fields, files, conffiles and maintainer scripts."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")
CONFFILES = ["/etc/sentinel/sentinel.yaml", "/etc/logrotate.d/sentinel"]
# file in the package -> its single source in the checkout
SHIPPED_AS_IS = {
    "etc/sentinel/sentinel.yaml": "packaging/config/sentinel.yaml",
    "etc/logrotate.d/sentinel": "packaging/logrotate/sentinel",
    "lib/systemd/system/sentinel.service": "packaging/systemd/sentinel.service",
}


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def control(built_deb) -> dict[str, str]:
    fields = {}
    for line in dpkg_deb("-f", str(built_deb)).splitlines():
        if not line.startswith(" "):
            key, _sep, value = line.partition(":")
            fields[key] = value.strip()
    return fields


@pytest.fixture(scope="module")
def contents(built_deb) -> dict[str, tuple[str, str]]:
    """path (without the leading ./) -> (mode string, owner/group)."""
    entries = {}
    for line in dpkg_deb("-c", str(built_deb)).splitlines():
        mode, owner, _size, _date, _time, path, *_link = line.split(None, 6)
        entries[path.removeprefix("./").rstrip("/")] = (mode, owner)
    return entries


@pytest.fixture(scope="module")
def unpacked(built_deb, tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["dpkg-deb", "-R", str(built_deb), str(where)], check=True)
    return where


def test_file_name_follows_the_make_deb_convention(built_deb):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert built_deb.name == "sentinel_%s_%s.deb" % (version, arch)


def test_control_fields_and_dependencies(control, built_deb):
    assert control["Package"] == "sentinel"
    assert built_deb.name == "sentinel_%s_%s.deb" % (control["Version"], control["Architecture"])
    depends = [d.strip() for d in control["Depends"].split(",")]
    assert "python3-bpfcc" in depends and "bpftool" in depends
    # the bundled venv is built for one Python minor version: pinned both ways
    assert re.fullmatch(r"python3 \(>= 3\.(\d+)\)", depends[0]) and re.fullmatch(r"python3 \(<< 3\.(\d+)\)", depends[1])
    assert int(control["Installed-Size"]) > 1000


def test_files_are_where_the_agent_looks_for_them(contents):
    required = [
        "usr/bin/sentinel",
        "usr/lib/sentinel/venv/bin/sentinel",
        "usr/lib/sentinel/venv/pyvenv.cfg",
        "lib/systemd/system/sentinel.service",
        "etc/sentinel/sentinel.yaml",
        "etc/sentinel/rules.d",
        "etc/logrotate.d/sentinel",
        "usr/share/doc/sentinel/copyright",
    ]
    required += ["usr/share/sentinel/" + str(p.relative_to(REPO)) for p in (REPO / "rules").rglob("*.yaml")]
    required += ["usr/share/sentinel/" + str(p.relative_to(REPO)) for p in (REPO / "bpf").rglob("*") if p.is_file()]
    assert [path for path in required if path not in contents] == []
    assert contents["usr/bin/sentinel"][0] == "-rwxr-xr-x"
    assert {owner for _mode, owner in contents.values()} == {"root/root"}
    # whatever the umask of the checkout, nothing is writable but by root
    assert [path for path, (mode, _owner) in contents.items() if mode[0] != "l" and "w" in mode[4:]] == []
    assert not [path for path in contents if "/.git" in path or path.endswith(".egg-info")]


def test_venv_uses_the_system_python_and_its_bcc(unpacked):
    venv = unpacked / "usr/lib/sentinel/venv"
    assert os.readlink(venv / "bin/python3") == "/usr/bin/python3"
    config = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in config
    assert (venv / "bin/sentinel").read_text().startswith("#!/usr/lib/sentinel/venv/bin/python\n")


def test_no_build_path_is_left_in_the_package(unpacked):
    """A venv records its own path; the staging root must not survive anywhere, bytecode
    included (compiled with the final paths)."""
    leaked = subprocess.run(["grep", "-rlF", "sentinel-deb.", str(unpacked)], capture_output=True, text=True)
    assert leaked.stdout == ""
    pycs = list((unpacked / "usr/lib/sentinel/venv/lib").rglob("sentinel/__pycache__/config.*.pyc"))
    assert pycs and b"/usr/lib/sentinel/venv/lib/" in pycs[0].read_bytes()


def test_conffiles(unpacked):
    listed = (unpacked / "DEBIAN/conffiles").read_text().split()
    assert listed == CONFFILES
    assert all((unpacked / path.lstrip("/")).is_file() for path in listed)


def test_shipped_files_are_the_checkout_sources(unpacked):
    for packaged, source in SHIPPED_AS_IS.items():
        assert (unpacked / packaged).read_bytes() == (REPO / source).read_bytes(), packaged


@pytest.mark.parametrize("script", MAINTAINER_SCRIPTS)
def test_maintainer_script_is_executable_posix_sh(unpacked, script):
    path = unpacked / "DEBIAN" / script
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert path.read_text().startswith("#!/bin/sh\n")
    checked = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_postinst_never_starts_or_enables_the_agent(unpacked):
    text = (unpacked / "DEBIAN/postinst").read_text()
    commands = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    # try-restart restarts an agent that runs already (an upgrade) and starts nothing
    assert not [c for c in commands if re.search(r"(?<!try-)\b(start|enable|restart)\b", c)]
    assert [c for c in commands if "try-restart" in c]
