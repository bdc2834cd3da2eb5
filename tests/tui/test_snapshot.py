"""The layout at 80x24 against committed text screenshots (styles dropped, so they diff well).

After an intended layout change, regenerate them and review the diff:
    SENTINEL_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/tui/test_snapshot.py
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from tui_helpers import screen_text, wait_for

from sentinel.tui.app import SentinelApp
from sentinel.tui.sample import write_sample

GOLDEN = Path(__file__).parent / "golden"
FIXED_NOW_NS = 1_795_000_000_000_000_000  # 2026-11-18T...: fixed, so the clock column is stable


def shots(db_path: str) -> dict[str, str]:
    taken = {}

    async def main():
        app = SentinelApp(db_path, poll_seconds=60)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, app.first_page_shown.is_set)
            await wait_for(pilot, lambda: "? Help" in screen_text(app), what="the footer")
            await pilot.pause(0.2)
            taken["alerts_80x24"] = screen_text(app)
            await pilot.press("down", "down", "enter")
            await wait_for(pilot, lambda: app.detail_seq is not None)
            await pilot.pause(0.1)
            taken["alert_detail_80x24"] = screen_text(app)
            await pilot.press("escape", "2")
            await wait_for(pilot, lambda: app.query_state.kind == "events" and app.first_page_shown.is_set())
            await pilot.pause(0.1)
            taken["events_80x24"] = screen_text(app)

    asyncio.run(main())
    return taken


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    path = tmp_path_factory.mktemp("snapshot") / "events.db"
    write_sample(str(path), now_ns=FIXED_NOW_NS)
    return shots(str(path))


@pytest.mark.parametrize("name", ["alerts_80x24", "alert_detail_80x24", "events_80x24"])
def test_layout_matches_the_golden_screenshot(screenshots, name):
    golden = GOLDEN / (name + ".txt")
    if os.environ.get("SENTINEL_UPDATE_GOLDEN"):
        golden.write_text(screenshots[name] + "\n")
    assert golden.exists(), "no golden file %s: run with SENTINEL_UPDATE_GOLDEN=1 to create it" % golden
    assert screenshots[name] + "\n" == golden.read_text()
