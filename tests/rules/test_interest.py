"""Interest: the event types and the open filter the sensors get must never hide a match."""

from __future__ import annotations

import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.events.model import Event, Fd, Process
from sentinel.rules.ruleset import load_rules_text

NARROWABLE = """
- macro: open_read
  condition: evt.type in (open, openat, openat2) and evt.is_open_read = true and fd.typechar = f
- rule: Shadow
  desc: d
  condition: open_read and (fd.name in (/etc/shadow, /etc/gshadow) or fd.directory = /etc/sudoers.d)
  output: x
  priority: warning
- rule: Keys
  desc: d
  condition: open_read and (fd.name startswith /root/.ssh/ or fd.name glob '/home/*/.ssh/*' or fd.name pmatch (/srv/keys))
  output: x
  priority: warning
- rule: Tool opens anything
  desc: d
  condition: evt.type = openat and proc.name in (nc, socat)
  output: x
  priority: warning
- rule: Keys file anywhere
  desc: d
  condition: open_read and fd.filename in (authorized_keys, authorized_keys2)
  output: x
  priority: warning
- rule: Exec
  desc: d
  condition: evt.type = execve and proc.name = bash
  output: x
  priority: notice
"""
NOT_NARROWABLE = """
- rule: Anything but tmp
  desc: d
  condition: evt.type = openat and not fd.name startswith /tmp/
  output: x
  priority: warning
"""


def load(*texts: str):
    return load_rules_text([("r%d.yaml" % i, textwrap.dedent(t)) for i, t in enumerate(texts)])


def test_narrowed_interest():
    interest = load(NARROWABLE).interest
    assert interest.event_types == frozenset({"open", "openat", "openat2", "execve"})
    assert interest.open_path_prefixes == ("/etc/gshadow", "/etc/shadow", "/etc/sudoers.d/", "/home/", "/root/.ssh/", "/srv/keys")
    assert interest.open_comms == frozenset({"nc", "socat"})
    assert interest.open_basenames == frozenset({"authorized_keys", "authorized_keys2"})
    assert interest.reasons == ()


def test_a_rule_that_cannot_be_narrowed_is_named():
    interest = load(NARROWABLE, NOT_NARROWABLE).interest
    assert interest.open_path_prefixes is None
    assert interest.reasons == ("rule 'Anything but tmp' forces every open to userspace",)


def test_no_open_rules_means_no_opens():
    interest = load("- rule: E\n  desc: d\n  condition: evt.type = execve\n  output: x\n  priority: debug\n").interest
    assert interest.event_types == frozenset({"execve"})
    assert interest.open_path_prefixes == ()


_PATHS = st.sampled_from(["/etc/shadow", "/etc/shadowed", "/etc/sudoers.d/x", "/etc/sudoers", "/root/.ssh/id", "/root/.sshx",
                          "/home/a/.ssh/k", "/home/a/x", "/srv/keys", "/srv/keys/a", "/srv/keysx", "/tmp/a", "/var/log/x",
                          "/home/b/.ssh/authorized_keys", "/opt/authorized_keys2", "/opt/authorized_keys3"])
_COMMS = st.sampled_from(["nc", "socat", "cat", "bash"])
RULESET = load(NARROWABLE)


@settings(max_examples=300, deadline=None)
@given(path=_PATHS, comm=_COMMS, event_type=st.sampled_from(["open", "openat", "openat2", "execve"]),
       flags=st.sampled_from([0, 1, 2]))
def test_filter_over_approximates(path, comm, event_type, flags):
    interest = RULESET.interest
    event = Event(event_type, Process(10, 1, comm=comm), res=3, args={"flags": flags}, fd=Fd(3, "file", path), num=1)
    if not RULESET.match(event):
        return
    assert interest.wants(event_type)
    if event_type in ("open", "openat", "openat2"):
        passes = (
            comm in interest.open_comms
            or path.rsplit("/", 1)[-1] in interest.open_basenames
            or any(path.startswith(p) for p in interest.open_path_prefixes)
        )
        assert passes, (path, comm)
