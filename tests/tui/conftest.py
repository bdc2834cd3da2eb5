"""Fixtures of the TUI tests: a sample store written by the store's own writer."""

from __future__ import annotations

import pytest

from sentinel.tui.sample import write_sample


@pytest.fixture
def sample_db(tmp_path):
    path = tmp_path / "events.db"
    ids = write_sample(str(path))
    return path, ids
