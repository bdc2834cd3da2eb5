"""Shared fixtures and the policy for tests that need the kernel.

Kernel tests run for real wherever we are root with bcc (CI is); only the BPF LSM, which
this kernel refuses, is skipped here, and the skip says why.
"""

from __future__ import annotations

import os

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "kernel" in item.keywords:
            # Under root a missing bcc is an install bug: the test fails, it is not skipped.
            if not IS_ROOT:
                item.add_marker(pytest.mark.skip(reason="needs root to load BPF programs"))
