from __future__ import annotations

import pytest
from enforce_helpers import MECHANISMS

from sentinel.actions.enforce_kernel import KernelEnforcer
from sentinel.kernel.probe import scratch_cgroup


@pytest.fixture
def cgroup(request):
    """A cgroup of the test's own: the cgroup programs attach there, never to the host's root."""
    with scratch_cgroup("enforce-" + request.module.__name__.rsplit("_", 1)[-1]) as path:
        yield path


@pytest.fixture
def kernel(cgroup):
    enforcer = KernelEnforcer(MECHANISMS, cgroup_path=cgroup)
    yield enforcer
    enforcer.close()
