"""Installing, upgrading, removing and purging the .deb, each in a fresh Debian bookworm
root (see conftest.py): what an administrator does with dpkg and apt."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

INSTALLED = "install ok installed"
# Bookkeeping of dpkg, apt and debconf: changed by any install, not by what it left behind.
BOOKKEEPING = ("/var/lib/dpkg/", "/var/log/", "/var/cache/apt/", "/var/cache/debconf/", "/var/lib/apt/", "/tmp/")


def status(rootfs, package: str = "sentinel") -> str:
    result = rootfs.run("dpkg-query -W -f='${Status} ${Version}' %s" % package, check=False)
    return result.stdout.strip() if result.returncode == 0 else "not installed"


def install(rootfs, deb: Path, dpkg_options: str = "") -> None:
    inside = rootfs.put(deb, "/tmp/" + deb.name)
    rootfs.run("dpkg %s -i %s" % (dpkg_options, inside))


def repack(deb: Path, version: str, out: Path, change=None) -> Path:
    """The same package rebuilt with another version (and `change(tree)` applied)."""
    tree = out / ("tree-" + version)
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN/control"
    lines = ["Version: " + version if line.startswith("Version:") else line for line in control.read_text().splitlines()]
    control.write_text("\n".join(lines) + "\n")
    if change:
        change(tree)
    rebuilt = out / deb.name.replace("_%s_" % deb.name.split("_")[1], "_%s_" % version)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "-z0", "--build", str(tree), str(rebuilt)], check=True, capture_output=True)
    return rebuilt


def test_dpkg_install_then_apt_fixes_dependencies_and_the_agent_runs(bare_rootfs, built_deb):
    rootfs = bare_rootfs
    inside = rootfs.put(built_deb, "/tmp/" + built_deb.name)
    first = rootfs.run("dpkg -i %s" % inside, check=False)
    assert first.returncode != 0 and "python3-bpfcc" in first.stderr  # a bare root lacks them
    rootfs.run("apt-get install -f -y -qq --no-install-recommends")
    assert status(rootfs).startswith(INSTALLED)
    version = status(rootfs).split()[-1]

    assert rootfs.run("sentinel --version").stdout.strip().endswith(version)
    # the bundled venv sees bcc from python3-bpfcc; rules and BPF sources are found in
    # /usr/share/sentinel, not beside the package as in a checkout
    probe = rootfs.run(
        "/usr/lib/sentinel/venv/bin/python -I -c 'import bcc, sentinel.config as c, sentinel.kernel.loader as l;"
        " print(c.default_rules_dir(), l._BPF_DIR_CANDIDATES[1].is_dir())'"
    )
    assert probe.stdout.split() == ["/usr/share/sentinel/rules", "True"]


def test_installed_but_neither_enabled_nor_started(rootfs, built_deb):
    install(rootfs, built_deb)
    assert (rootfs.path / "lib/systemd/system/sentinel.service").is_file()
    wants = rootfs.path / "etc/systemd/system/multi-user.target.wants/sentinel.service"
    assert not wants.exists() and not wants.is_symlink()
    # state recorded by deb-systemd-helper, so that purge can forget the unit
    assert (rootfs.path / "var/lib/systemd/deb-systemd-helper-enabled/sentinel.service.dsh-also").exists()


def test_remove_keeps_data_and_purge_leaves_nothing(rootfs, built_deb):
    before = rootfs.files()
    install(rootfs, built_deb)
    # what the agent and the admin create while it is installed
    rootfs.run(
        "mkdir -p /var/lib/sentinel /var/cache/sentinel/bcc-btf /var/log/sentinel && "
        "echo db > /var/lib/sentinel/events.db && echo tree > /var/cache/sentinel/bcc-btf/x.h && "
        "echo '{}' > /var/log/sentinel/alerts.json && echo '- list: mine' > /etc/sentinel/rules.d/local.yaml && "
        "echo 'log_level: debug' >> /etc/sentinel/sentinel.yaml"
    )

    rootfs.run("dpkg -r sentinel")
    assert status(rootfs).startswith("deinstall ok config-files")
    assert not (rootfs.path / "usr/lib/sentinel").exists() and not (rootfs.path / "usr/bin/sentinel").exists()
    assert (rootfs.path / "var/lib/sentinel/events.db").read_text() == "db\n"
    assert (rootfs.path / "etc/sentinel/sentinel.yaml").read_text().endswith("log_level: debug\n")

    rootfs.run("dpkg --purge sentinel")
    assert status(rootfs) == "not installed" or status(rootfs).startswith("unknown ok not-installed")
    left = sorted(path for path in rootfs.files() - before if not path.startswith(BOOKKEEPING))
    assert left == []


def test_upgrade_keeps_the_edited_config_and_the_store(rootfs, built_deb, tmp_path):
    install(rootfs, built_deb)
    version = status(rootfs).split()[-1]
    config = rootfs.path / "etc/sentinel/sentinel.yaml"
    rootfs.run("echo 'log_level: debug' >> /etc/sentinel/sentinel.yaml && mkdir -p /var/lib/sentinel && echo db > /var/lib/sentinel/events.db")
    edited = config.read_text()

    # 1. the packaged config unchanged: dpkg keeps the admin's without asking
    same_config = repack(built_deb, version + "+1", tmp_path)
    install(rootfs, same_config)
    assert status(rootfs) == "%s %s+1" % (INSTALLED, version)
    assert config.read_text() == edited
    assert (rootfs.path / "var/lib/sentinel/events.db").read_text() == "db\n"

    # 2. the packaged config changed too: the non-interactive choice keeps the admin's and
    # puts the new one beside it
    def new_default(tree: Path) -> None:
        shipped = tree / "etc/sentinel/sentinel.yaml"
        shipped.write_text(shipped.read_text() + "# a new setting's documentation\n")

    changed_config = repack(built_deb, version + "+2", tmp_path, new_default)
    install(rootfs, changed_config, "--force-confdef --force-confold")
    assert status(rootfs) == "%s %s+2" % (INSTALLED, version)
    assert config.read_text() == edited
    assert (rootfs.path / "etc/sentinel/sentinel.yaml.dpkg-dist").read_text().endswith("# a new setting's documentation\n")
    assert (rootfs.path / "var/lib/sentinel/events.db").read_text() == "db\n"
    assert rootfs.run("sentinel --version").stdout.strip().endswith(version)


@pytest.mark.kernel
def test_installed_agent_passes_doctor_and_loads_bpf_programs(rootfs, built_deb):
    """The installed files against the real kernel (host /proc and /sys mounted for each
    command): `sentinel doctor` finds it can run, building the header tree from BTF into
    /var/cache/sentinel; a tracepoint program then sees an exec through a ring buffer and
    a cgroup program attaches."""
    install(rootfs, built_deb)
    report = json.loads(rootfs.run("sentinel doctor --json").stdout.strip().splitlines()[-1])
    assert report["can_run"] is True, report["cannot_run_because"]
    assert (rootfs.path / "var/cache/sentinel/bcc-btf").is_dir()
    probe = rootfs.put(Path(__file__).with_name("unit_probe.py"), "/tmp/unit_probe.py")
    results = json.loads(rootfs.run("/usr/lib/sentinel/venv/bin/python -I %s $$" % probe).stdout.strip().splitlines()[-1])
    assert results["exec_event"]["ok"] and results["cgroup_attach"]["ok"], results
