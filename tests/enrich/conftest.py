"""Fixtures of the enrich tests: a fake /proc tree and a settable clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakeproc import FakeClock, FakeProc


@pytest.fixture
def fake_proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()
