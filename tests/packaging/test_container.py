"""packaging/container: the Containerfile built without a container engine, and the
DaemonSet checked against what the agent needs.

No registry or engine is available, so the image is built the way an engine would, on a
debootstrap root of the same Debian release standing in for `FROM debian:bookworm`: each
instruction of the Containerfile is carried out in order (COPY copies from the build
context, RUN runs in the root with chroot), then the entrypoint runs in the root. An
instruction this interpreter does not know fails the test rather than being skipped.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from sentinel import config

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "packaging/container/Containerfile"
DAEMONSET = REPO / "packaging/container/daemonset.yaml"
UNIT = REPO / "packaging/systemd/sentinel.service"


def instructions(path: Path = CONTAINERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Containerfile ends with a continuation"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in logical]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def unit_exec_start() -> list[str]:
    for line in UNIT.read_text().splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line.partition("=")[2])
    raise AssertionError("no ExecStart in the unit")


def unit_capabilities() -> set[str]:
    for line in UNIT.read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            return set(line.partition("=")[2].split())
    raise AssertionError("no CapabilityBoundingSet in the unit")


class Image:
    """The result of building: the root, and the container's default command."""

    def __init__(self, rootfs) -> None:
        self.rootfs = rootfs
        self.entrypoint: list[str] = []
        self.cmd: list[str] = []
        self.volumes: list[str] = []


def build(rootfs, context: Path, build_args: dict[str, str], suite: str) -> Image:
    image = Image(rootfs)
    variables: dict[str, str] = {}

    def expand(text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], text)

    steps = instructions()
    assert steps[0] == ("FROM", "debian:%s" % suite), "the stand-in root is Debian %s" % suite
    for instruction, arguments in steps[1:]:
        if instruction == "ARG":
            name, _sep, default = arguments.partition("=")
            variables[name] = build_args.get(name, default)
            assert variables[name], "build argument %s has no value" % name
        elif instruction == "COPY":
            *sources, target = shlex.split(expand(arguments))
            for pattern in sources:
                matches = glob.glob(str(context / pattern))
                assert matches, "COPY %s: nothing in the build context" % pattern
                for match in matches:
                    destination = rootfs.path / target.lstrip("/")
                    if target.endswith("/"):
                        destination = destination / Path(match).name
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(match, destination)
        elif instruction == "RUN":
            rootfs.run(expand(arguments), env=dict(variables), timeout=900)
        elif instruction == "VOLUME":
            image.volumes = exec_form(arguments)
        elif instruction == "ENTRYPOINT":
            image.entrypoint = exec_form(arguments)
        elif instruction == "CMD":
            image.cmd = exec_form(arguments)
        else:
            raise AssertionError("Containerfile instruction %s is not understood here" % instruction)
    return image


def test_default_command_is_the_service_command():
    steps = dict(instructions())
    assert exec_form(steps["ENTRYPOINT"]) + exec_form(steps["CMD"]) == unit_exec_start()


@pytest.mark.slow
@pytest.mark.kernel
def test_containerfile_builds_and_the_agent_runs(bare_rootfs, built_deb, debian_suite, tmp_path):
    context = tmp_path / "context"
    (context / "dist").mkdir(parents=True)
    shutil.copy(built_deb, context / "dist")
    image = build(bare_rootfs, context, {"SENTINEL_DEB": "dist/" + built_deb.name}, debian_suite)

    assert image.volumes == ["/var/lib/sentinel", "/var/cache/sentinel"]
    assert not (bare_rootfs.path / "tmp/sentinel.deb").exists()  # the layer is cleaned
    # the container's command with `doctor --json` for arguments, host /proc and /sys
    # mounted as the DaemonSet does
    command = " ".join(shlex.quote(part) for part in image.entrypoint + ["doctor", "--json"])
    report = json.loads(bare_rootfs.run(command).stdout.strip().splitlines()[-1])
    assert report["can_run"] is True, report["cannot_run_because"]


@pytest.fixture(scope="module")
def daemonset() -> dict:
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(DAEMONSET.read_text())}
    return documents


def test_daemonset_gives_the_agent_the_host(daemonset):
    pod = daemonset["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    (container,) = pod["containers"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounted = {}
    for mount in container["volumeMounts"]:
        source = volumes[mount["name"]]
        mounted[mount["mountPath"]] = source.get("hostPath", {}).get("path", "<%s>" % next(k for k in source if k != "name"))
    needed = [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/fs/bpf",
        "/sys/fs/cgroup",
        "/var/lib/sentinel",
        "/var/cache/sentinel",
        "/etc/machine-id",
    ]
    # each host path at the same place inside, where the agent and bcc look for it
    assert {path: mounted.get(path) for path in needed} == {path: path for path in needed}
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert {"/var/lib/sentinel", "/var/cache/sentinel", "/sys/fs/bpf", "/run/sentinel"} <= writable


def test_daemonset_capabilities_are_the_units(daemonset):
    (container,) = daemonset["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    capabilities = container["securityContext"]["capabilities"]
    assert capabilities["drop"] == ["ALL"]
    assert {"CAP_" + name for name in capabilities["add"]} == unit_capabilities()


def test_daemonset_runs_the_image_command_with_a_valid_config(daemonset, tmp_path):
    (container,) = daemonset["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == exec_form(dict(instructions())["CMD"])
    config_path = container["args"][container["args"].index("--config") + 1]
    config_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == config_path)
    written = tmp_path / config_mount["subPath"]
    written.write_text(daemonset["ConfigMap"]["data"][config_mount["subPath"]])
    assert config.load(written).alerts.file == "-"
