"""What the sensor attaches for an interest, and its configuration checks (no kernel needed)."""

from __future__ import annotations

import pytest

from sentinel import config
from sentinel.config import Config, SensorConfig
from sentinel.errors import ConfigError
from sentinel.events.interest import PROCESS_LIFECYCLE, Interest
from sentinel.sensor import PROGRAMS, Sensor, env_keep_keys, programs_for


def test_the_process_lifecycle_is_always_attached():
    always = {p.name for p in programs_for(frozenset())}
    assert always == {p.name for p in PROGRAMS if p.event_types & PROCESS_LIFECYCLE}
    assert "snt_exec" in always and "snt_exit" in always


def test_every_program_serves_an_event_type_and_is_named_for_bpftool():
    for program in PROGRAMS:
        assert program.event_types, program.name
        assert program.name.startswith("snt_")
        assert program.kind in ("raw_tracepoint", "tracepoint")


def test_env_keep_names_become_trie_prefixes():
    assert env_keep_keys(("LD_PRELOAD", "PATH")) == [b"LD_PRELOAD=", b"PATH="]


@pytest.mark.parametrize("bad", ["", "A=B", "X" * 64, "NUL\0"])
def test_env_keep_names_that_cannot_match_are_errors(bad):
    with pytest.raises(ConfigError, match="sensor.env_keep"):
        env_keep_keys((bad,))


@pytest.mark.parametrize(
    "setting, message",
    [("ringbuf_pages: 3", "ringbuf_pages must be a power of two, not 3"),
     ("ringbuf_pages: 0", "ringbuf_pages must be a power of two, not 0"),
     ("batch_ms: 0", "batch_ms must be between 1 and 1000, not 0"),
     ("batch_ms: 5000", "batch_ms must be between 1 and 1000, not 5000")],
)
def test_ring_buffer_settings_are_checked_when_the_configuration_loads(tmp_path, setting, message):
    """Before anything starts, with the file and line of the sensor section."""
    path = tmp_path / "sentinel.yaml"
    path.write_text("store:\n  path: /tmp/x.db\nsensor:\n  %s\n" % setting)
    with pytest.raises(ConfigError, match=message) as raised:
        config.load(path)
    assert str(raised.value).startswith("%s:4:" % path)
    with pytest.raises(ConfigError, match=message):
        SensorConfig(**{setting.split(":")[0]: int(setting.split(":")[1])})


def test_private_struct_offsets_read_from_btf_match_bpftool():
    """The small BTF reader against bpftool's own dump of the same members."""
    import json
    import subprocess

    from sentinel.kernel import loader

    defines = loader.private_layout_defines()
    dump = json.loads(
        subprocess.run(["bpftool", "-j", "btf", "dump", "file", loader.BTF_PATH], capture_output=True, check=True).stdout
    )
    structs = {t["name"]: t for t in dump["types"] if t["kind"] == "STRUCT"}
    for macro, struct_name, member in loader.BTF_MEMBER_OFFSETS:
        if struct_name not in structs:
            assert macro not in defines
            continue
        (expected,) = [m["bits_offset"] // 8 for m in structs[struct_name]["members"] if m["name"] == member]
        assert defines[macro] == expected, macro
    assert {"SENTINEL_MOUNT_OFF_MNT", "SENTINEL_MOUNT_OFF_PARENT", "SENTINEL_MOUNT_OFF_MOUNTPOINT"} <= set(defines)


def test_an_open_filter_larger_than_the_kernel_map_is_turned_off_not_truncated(monkeypatch):
    """Dropping prefixes would narrow the rules: the filter is switched off instead, with the reason."""
    from structlog.testing import capture_logs

    from sentinel.events import abi
    from sentinel.events.interest import Interest

    class FakeMap:
        """What _fill_open_filter uses of a bcc table."""

        def __init__(self) -> None:
            self.items = []

        def Key(self):  # noqa: N802 - bcc's spelling
            return _Key()

        def Leaf(self):  # noqa: N802
            return _Leaf()

        def clear(self) -> None:
            self.items.clear()

        def __setitem__(self, key, value) -> None:
            self.items.append(value)

    class _Key:
        prefixlen = 0

    class _Leaf:
        enabled = pass_created = has_comms = has_basenames = 0

    names = (b"snt_open_prefixes", b"snt_open_comms", b"snt_open_basenames", b"snt_open_uids", b"snt_open_cgroups", b"snt_open_first",
             b"snt_open_cfg")
    maps = {name: FakeMap() for name in names}
    sensor = Sensor(Config(), Interest(), table=object())
    sensor._bpf = maps
    many = tuple("/p%d/" % i for i in range(abi.OPEN_FILTER_ENTRIES + 1))
    with capture_logs() as logs:
        sensor._fill_open_filter(Interest(event_types=frozenset({"openat"}), open_path_prefixes=many))
    (leaf,) = maps[b"snt_open_cfg"].items
    assert leaf.enabled == 0 and not maps[b"snt_open_prefixes"].items
    (entry,) = [e for e in logs if e["event"] == "sensor.open_filter_off"]
    assert "more open filter prefixes than the kernel map holds (1024)" in entry["reasons"]
