"""Helpers to drive the app with Textual's Pilot and read what it shows."""

from __future__ import annotations

import time
from collections.abc import Callable

def screen_text(app) -> str:
    """What the terminal shows, as plain text lines (styles dropped)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def wait_for(pilot, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s; screen:\n%s" % (what, screen_text(pilot.app)))
        await pilot.pause(0.05)
