"""The Python mirror (sentinel.events.abi) against the C header, as bcc compiles it."""

from __future__ import annotations

import pytest

from sentinel.errors import KernelError
from sentinel.events import abi
from sentinel.kernel import loader


def _compile_with_header(asserts: str) -> None:
    include = loader.bpf_dir() / "include"
    text = '#include "sentinel_events.h"\n' + asserts
    loader.compile_text(text, ["-I%s" % include])


def test_mirror_matches_the_header_as_bcc_compiles_it():
    asserts = abi.c_static_asserts()
    assert asserts.count("_Static_assert") > 150
    _compile_with_header(asserts)


def test_a_one_sided_change_fails_the_check(capfd):
    """Moving one field in the mirror only (the header unchanged) must not compile."""
    fields = list(abi.EXEC.fields)
    i = [name for name, _ in fields].index("ppid")
    fields[i], fields[i + 1] = fields[i + 1], fields[i]  # ppid <-> old_pid
    drifted = abi.Layout("sentinel_exec", tuple(fields))
    original = abi.LAYOUTS
    try:
        abi.LAYOUTS = (drifted,)
        asserts = abi.c_static_asserts()
    finally:
        abi.LAYOUTS = original
    with pytest.raises(KernelError):
        _compile_with_header(asserts)
    assert "sentinel_exec.ppid: abi.py says offset 68" in capfd.readouterr().err


def test_every_opcode_has_a_layout_that_starts_with_the_header():
    for op, layout in abi.RECORDS.items():
        assert 0 < op < abi.OP_SLOTS
        assert layout.names[: len(abi.HEADER.fields)] == tuple("hdr." + n for n in abi.HEADER.names)
        assert layout.size % 8 == 0, layout.c_name


def test_bodies_fit_the_scratch_record():
    # sentinel_common.h: SENTINEL_BODY_MAX 256 bounds every fixed body
    assert max(layout.size for layout in abi.RECORDS.values()) <= 256


def test_start_ticks_matches_proc_precision():
    tick_ns = 1_000_000_000 // abi.CLK_TCK
    kernel_ns = 123 * tick_ns + tick_ns - 1
    assert abi.start_ticks(kernel_ns) == 123
    assert abi.same_start_ticks(kernel_ns, 123)
    assert not abi.same_start_ticks(kernel_ns, 124)
