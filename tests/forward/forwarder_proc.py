"""A forwarder in its own process, for the test that SIGKILLs it mid-stream.

usage: forwarder_proc.py OUTBOX WEBHOOK_URL COUNT
Submits COUNT alerts (none when 0: a restart), writes them to the outbox, prints
"submitted", then delivers until killed or until everything is delivered ("delivered").
"""

from __future__ import annotations

import sys

import time

from sentinel.actions.alert import HostIdentity, alert_record
from sentinel.actions.forward import Forwarder
from sentinel.actions.forward.settings import parse_output


def main() -> None:
    outbox, url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    identity = HostIdentity("killed-host", "m", "b")
    output = parse_output("hook", "webhook", {"url": url, "backoff_initial": 0.05, "backoff_max": 0.2})
    forwarder = Forwarder([output], outbox, identity=identity)
    forwarder.start()
    forwarder.submit_many(
        alert_record(host=identity, ruleset_version="", time_ns=time.time_ns(), rule="r", priority="warning",
                     output="n=%d" % n, output_fields={"n": n}, tags=()) for n in range(count)
    )
    forwarder.flush(30)
    print("submitted", flush=True)
    if forwarder.wait_delivered(120):
        print("delivered", flush=True)
    forwarder.stop()


if __name__ == "__main__":
    main()
