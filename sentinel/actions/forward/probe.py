"""`sentinel forward test`: one test alert through one configured output, end to end.

It uses the real transport and the same acknowledgement rules as the agent, through a
throw-away outbox, so the agent's cursors and backlog are never touched.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sentinel.actions.alert import HostIdentity, alert_record
from sentinel.actions.forward.forwarder import Forwarder
from sentinel.actions.forward.settings import parse_output
from sentinel.config import Config
from sentinel.errors import ConfigError

TEST_RULE = "Sentinel forwarding test"


@dataclass(frozen=True)
class ProbeResult:
    output: str
    type: str
    record_id: str
    delivered: bool
    seconds: float
    error: str = ""


def send_test_alert(config: Config, name: str, timeout: float = 10.0) -> ProbeResult:
    """Send one alert (priority emergency, so every min_priority takes it) to output `name`."""
    chosen = [o for o in config.outputs if o.name == name]
    if not chosen:
        known = ", ".join(o.name for o in config.outputs) or "none configured"
        raise ConfigError("no output named %r (outputs: %s)" % (name, known))
    settings = parse_output(chosen[0].name, chosen[0].type, chosen[0].options)
    # The filter must not hide the test alert; everything else stays as configured.
    settings = dataclasses.replace(settings, min_priority="debug", rules=(), tags=(), backoff_initial=0.2, backoff_max=1.0)
    identity = HostIdentity.current()
    record = alert_record(
        host=identity,
        ruleset_version="",
        time_ns=time.time_ns(),
        rule=TEST_RULE,
        priority="emergency",
        output="sentinel forwarding test to output %s (not a real alert)" % name,
        output_fields={"forward.output": name, "forward.test": True},
        tags=("sentinel", "test"),
        source="internal",
    )
    with tempfile.TemporaryDirectory(prefix="sentinel-forward-test-") as directory:
        forwarder = Forwarder([settings], str(Path(directory) / "outbox.db"), identity=identity, trim_seconds=3600)
        started = time.monotonic()
        forwarder.start()
        forwarder.submit(record)
        delivered = forwarder.wait_delivered(timeout)
        elapsed = time.monotonic() - started
        forwarder.stop(timeout=2)
        status = forwarder.workers[0].status
    error = "" if delivered else (status.last_error or "not acknowledged within %.0f s" % timeout)
    if delivered and status.dropped:
        delivered, error = False, "the receiver refused the record (dropped)"
    return ProbeResult(name, settings.type, record["id"], delivered, elapsed, error)
