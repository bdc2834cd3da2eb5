"""Interest: the event types and the open filter the sensors get must never hide a match."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.events import abi
from sentinel.events.interest import (
    ACCMODES_READ,
    ACCMODES_WRITE,
    IN_CONTAINER,
    ON_HOST,
    Interest,
    OpenSelectors,
    plan_open_filter,
)
from sentinel.events.model import Event, Fd, Process
from sentinel.rules.ruleset import load_rules, load_rules_text

FILE_KINDS = frozenset(range(16)) - {0o1, 0o4, 0o14}  # fd.typechar = f: not a directory, fifo or socket

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


def test_kill_rules_make_their_event_types_urgent_and_survive_a_union():
    kill = """
    - rule: Kill miners
      desc: d
      condition: evt.type = execve and proc.name = xmrig
      output: x
      priority: critical
      action: kill
    - rule: Deny nothing urgent
      desc: d
      condition: evt.type = connect and fd.rport = 4444
      output: x
      priority: critical
      action: deny
    """
    interest = load(NARROWABLE, kill).interest
    assert interest.urgent_types == frozenset({"execve"})
    assert load(NARROWABLE).interest.urgent_types == frozenset()
    always = Interest(event_types=frozenset({"connect"}))
    assert interest.union(always).urgent_types == always.union(interest).urgent_types == frozenset({"execve"})


_PATHS = st.sampled_from(["/etc/sudoers.d/a", "/etc/passwd", "/etc/shadow", "/etc/shadowed", "/etc/sudoers.d/x", "/etc/sudoers", "/root/.ssh/id", "/root/.sshx",
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


SELECTING = """
- macro: open_write
  condition: evt.type in (open, openat, openat2) and evt.is_open_write = true and fd.typechar = f
- macro: container
  condition: (container.id != host)
- rule: Write below etc
  desc: d
  condition: open_write and fd.name startswith /etc/
  output: x
  priority: warning
- rule: Root writes a key
  desc: d
  condition: open_write and user.uid in (0, 1000) and fd.filename = authorized_keys
  output: x
  priority: warning
- rule: Release agent
  desc: d
  condition: open_write and container and fd.name endswith release_agent
  output: x
  priority: warning
"""


def test_selectors_every_open_rule_shares_narrow_every_open():
    interest = load(SELECTING).interest
    assert interest.open_path_prefixes == ("/etc/",)
    assert interest.open_basenames == frozenset({"authorized_keys"})
    # all three need an open for write of a non-directory, non-fifo inode
    assert interest.open_selectors == OpenSelectors(accmodes=ACCMODES_WRITE, file_types=FILE_KINDS)
    # one matches opens whatever their path: those by a container process pass
    assert interest.open_any_path == OpenSelectors(accmodes=ACCMODES_WRITE, file_types=FILE_KINDS, container=IN_CONTAINER)
    assert interest.reasons == ("rule 'Release agent' passes opens by access, file type, container only, whatever their path",)


def test_uid_selector_adds_the_uid_changes_the_table_must_follow():
    interest = load(SELECTING.replace("open_write and container and", "open_write and user.uid = 0 and")).interest
    assert interest.open_any_path.uids == frozenset({0})
    assert {"setuid", "setreuid", "setresuid"} <= interest.event_types


def test_a_read_rule_removes_the_access_selector():
    read_rule = """
- rule: Read shadow
  desc: d
  condition: evt.type = openat and evt.is_open_read = true and fd.name = /etc/shadow and not container.id = host
  output: x
  priority: warning
"""
    interest = load(SELECTING, read_rule).interest
    assert interest.open_selectors.accmodes is None  # {1,2,3} | {0,2,3}
    assert interest.open_selectors.file_types is None  # the read rule does not test the fd type
    assert interest.open_selectors.container is None  # only the host-less rules ask for containers
    assert interest.open_any_path.container == IN_CONTAINER


def test_host_only_rules_select_the_host():
    host_rule = "- rule: H\n  desc: d\n  condition: evt.type = openat and container.id = host\n  output: x\n  priority: debug\n"
    interest = load(host_rule).interest
    assert interest.open_path_prefixes is None and interest.open_any_path is None
    assert interest.open_selectors == OpenSelectors(container=ON_HOST)
    plan = plan_open_filter(interest, hybrid=True)
    assert plan.enabled and plan.cfg["any_path"] == 1 and plan.cfg["drop_class"] == abi.CGROUP_CONTAINER


def test_the_container_selector_cannot_drop_host_opens_on_hybrid_cgroups():
    interest = load(SELECTING).interest
    hybrid = plan_open_filter(interest, hybrid=True)
    assert hybrid.cfg["alt_drop_class"] == 0
    assert any("hybrid cgroups" in reason for reason in hybrid.reasons)
    unified = plan_open_filter(interest, hybrid=False)
    assert unified.cfg["alt_drop_class"] == abi.CGROUP_HOST


def test_plan_masks():
    plan = plan_open_filter(load(SELECTING).interest)
    assert plan.cfg["accmodes"] == 0b1110 and plan.cfg["alt_accmodes"] == 0b1110
    assert plan.cfg["file_types"] == 0xFFFF & ~(1 << 1 | 1 << 4 | 1 << 12)
    assert plan.prefixes == (b"/etc/",) and plan.basenames == (b"authorized_keys",)
    assert plan.cfg["alt_enabled"] == 1 and plan.cfg["uid_bits"] == 0
    assert not plan_open_filter(Interest(event_types=frozenset({"openat"}))).enabled


def test_union_with_an_interest_without_opens_keeps_the_filter():
    interest = load(SELECTING).interest
    merged = interest.union(Interest(event_types=frozenset({"execve", "connect"})))
    assert merged.open_path_prefixes == interest.open_path_prefixes
    assert merged.open_selectors == interest.open_selectors and merged.open_any_path == interest.open_any_path
    assert {"execve", "connect"} <= merged.event_types


def test_upstream_falco_selectors():
    """What the upstream Falco files allow: every rule that matches opens whatever their path
    needs fd.typechar = f, so directory and fifo opens outside the prefixes stay in the kernel;
    no access, uid or container selector holds for all of them."""
    upstream = sorted(str(p) for p in (Path(__file__).resolve().parents[3] / "shared" / "compat" / "falco").glob("*.yaml"))
    if not upstream:
        pytest.skip("the upstream Falco files are not next to the repository")
    interest = load_rules(upstream).interest
    # reads outside the prefixes pass only with "../" in the path as passed (directory traversal)
    assert interest.open_any_path == OpenSelectors(file_types=FILE_KINDS, dotdot_accmodes=frozenset({0}))
    assert interest.open_selectors == OpenSelectors()
    stable = load_rules([p for p in upstream if p.endswith("/falco_rules.yaml")]).interest
    assert stable.open_selectors == OpenSelectors(file_types=FILE_KINDS)


_ACCESS = st.sampled_from([0, 1, 2, 3, 0o10000000])
_UIDS = st.sampled_from([0, 1000, 33])
_CONTAINERS = st.sampled_from(["host", "0123456789ab"])
_KINDS = st.sampled_from(["file", "directory", "pipe"])
SELECTING_RULES = load(SELECTING, "- rule: U\n  desc: d\n  condition: evt.type = openat and evt.is_open_write = true and user.uid = 33"
                                  " and fd.typechar = d\n"
                                  "  output: x\n  priority: debug\n"
                                  "- rule: Read sudoers drop-ins\n  desc: d\n  condition: evt.type = openat and evt.is_open_read = true"
                                  " and fd.name startswith /etc/sudoers.d/\n  output: x\n  priority: debug\n"
                                  "- rule: Traversal\n  desc: d\n  condition: evt.type = openat and evt.is_open_read = true"
                                  " and fd.typechar = f and fd.name contains sh\n    and fd.nameraw contains '../'\n  output: x\n  priority: debug\n")
_DOTDOT_SCAN_MAX = 256  # SENTINEL_DOTDOT_SCAN_MAX: a longer path counts as having "../"


_RAW = st.sampled_from(["", "/srv/../", "/srv/..", "/.x./", "/" * 260])  # how the path was passed: before it


@settings(max_examples=400, deadline=None)
@given(path=_PATHS, raw=_RAW, flags=_ACCESS, uid=_UIDS, container=_CONTAINERS, kind=_KINDS)
def test_selectors_over_approximate(path, raw, flags, uid, container, kind):
    """Whatever a rule matches passes the kernel's checks, as the kernel makes them."""
    ruleset = SELECTING_RULES
    proc = Process(10, 1, comm="x")
    proc.uid = uid
    proc.container_id = container
    fd = Fd(3, kind, path)
    fd.nameraw = raw + path
    event = Event("openat", proc, res=3, args={"flags": flags}, fd=fd, num=1)
    if not ruleset.match(event):
        return
    plan = plan_open_filter(ruleset.interest)
    mode_type = {"file": 0o10, "directory": 0o04, "pipe": 0o01}[kind]
    accmode = 0xF if flags & 0o10000000 else 1 << (flags & 3)
    in_container = container != "host"

    def allowed(accmodes, types, uid_bit, drop_class):
        if not (accmodes & accmode and types >> mode_type & 1):
            return False
        if plan.cfg["uid_bits"] & uid_bit and not plan.uids.get(uid, 0) & uid_bit:
            return False
        return drop_class != (abi.CGROUP_CONTAINER if in_container else abi.CGROUP_HOST)

    assert allowed(plan.cfg["accmodes"], plan.cfg["file_types"], abi.OPEN_SEL_GLOBAL, plan.cfg["drop_class"])
    under = [p for p in plan.prefixes if path.startswith(p.decode())]  # the kernel takes the longest
    path_part = (bool(under) and plan.prefix_accmodes[max(under, key=len)] & accmode) or \
        path.rsplit("/", 1)[-1].encode() in plan.basenames
    alt = plan.cfg["alt_enabled"] and allowed(plan.cfg["alt_accmodes"], plan.cfg["alt_file_types"], abi.OPEN_SEL_ANY_PATH,
                                              plan.cfg["alt_drop_class"])
    if accmode & ~plan.cfg["alt_dotdot_accmodes"] == 0:  # the kernel scans the path as passed, NUL included
        alt = alt and ("../" in fd.nameraw or len(fd.nameraw.encode()) + 1 > _DOTDOT_SCAN_MAX)
    assert plan.cfg["any_path"] or path_part or alt


def test_prefixes_carry_the_access_modes_of_their_rules():
    """Write below etc makes /etc/ a prefix for writes only; a read rule on /etc/sudoers.d/
    keeps that longer prefix, for reads and (from /etc/) writes."""
    interest = SELECTING_RULES.interest
    assert interest.open_path_prefixes == ("/etc/", "/etc/sudoers.d/")
    assert interest.open_prefix_accmodes == (("/etc/", ACCMODES_WRITE),)
    plan = plan_open_filter(interest)
    assert plan.prefix_accmodes == {b"/etc/": 0b1110, b"/etc/sudoers.d/": 0b1111}
    # a longer prefix that allows nothing more is not kept; one kept under a union takes the
    # modes of the prefixes above it
    assert load(SELECTING, SELECTING.replace("Write below etc", "Write below sudoers").replace(
        "startswith /etc/", "startswith /etc/sudoers.d/")).interest.open_path_prefixes == ("/etc/",)
    reads_under = Interest(event_types=frozenset({"openat"}), open_path_prefixes=("/etc/x/",),
                           open_prefix_accmodes=(("/etc/x/", ACCMODES_READ),))
    merged = plan_open_filter(interest.union(reads_under))
    assert merged.prefix_accmodes[b"/etc/x/"] == 0b1111


def test_dotdot_selector_for_the_access_modes_only_traversal_rules_take():
    """Falco's directory traversal rule reads any path, through "../" only: reads (O_RDONLY,
    which no other any-path rule takes) need "../" in the path as passed; O_RDWR does not,
    a write rule takes it whatever its path."""
    traversal = SELECTING_RULES.interest.open_any_path
    assert traversal.dotdot_accmodes == frozenset({0})
    assert plan_open_filter(SELECTING_RULES.interest).cfg["alt_dotdot_accmodes"] == 0b1
    reads_only = load("- rule: T\n  desc: d\n  condition: evt.type = openat and evt.is_open_read = true and "
                      "fd.nameraw glob '*../*../*'\n  output: x\n  priority: debug\n").interest
    assert reads_only.open_any_path is None and reads_only.open_selectors.accmodes == ACCMODES_READ  # every rule: any path
    # a union keeps a mode only where neither side takes it without "../"
    assert OpenSelectors(dotdot_accmodes=ACCMODES_READ).union(OpenSelectors(accmodes=ACCMODES_WRITE)).dotdot_accmodes == {0}
    assert OpenSelectors(dotdot_accmodes=ACCMODES_READ).union(OpenSelectors()).dotdot_accmodes == frozenset()
    merged = Interest(event_types=frozenset({"openat"}), open_path_prefixes=(),
                      open_any_path=OpenSelectors(accmodes=frozenset({0}), dotdot_accmodes=frozenset({0})))
    assert merged.union(SELECTING_RULES.interest).open_any_path.dotdot_accmodes == frozenset({0})
    for condition in ("fd.nameraw contains '..'", "fd.nameraw glob '*[.]./*'", "not fd.nameraw contains '../'",
                      "(fd.nameraw contains '../' or fd.name startswith /tmp/x)"):
        interest = load("- rule: W\n  desc: d\n  condition: evt.type = openat and evt.is_open_write = true\n"
                        "    and fd.name startswith /etc/\n  output: x\n  priority: debug\n"
                        "- rule: T\n  desc: d\n  condition: evt.type = openat and %s\n  output: x\n  priority: debug\n"
                        % condition).interest
        assert interest.open_any_path is None or not interest.open_any_path.dotdot_accmodes, condition


def test_first_components_for_the_kernel_quick_check():
    def plan(*prefixes):
        return plan_open_filter(Interest(event_types=frozenset({"openat"}), open_path_prefixes=prefixes))

    quick = plan("/etc/shadow", "/var/log/", "/etc/pam.d/")
    assert quick.first_components == (b"etc", b"var") and quick.cfg["first_check"] == 1
    # "/etc" also matches "/etcfoo/x": its first component is not a whole one
    for prefixes in (("/etc",), ("/etc/", "/"), ("/tmp/", "/" + "x" * abi.OPEN_FIRST_COMPONENT_MAX + "/")):
        assert plan(*prefixes).first_components == () and plan(*prefixes).cfg["first_check"] == 0, prefixes


def test_validate_reports_the_selectors(tmp_path):
    from sentinel.rules.validate import validate

    rules = tmp_path / "r.yaml"
    rules.write_text(textwrap.dedent(SELECTING))
    result = validate([str(rules)])
    assert result.interest["open_selectors"] == {"access": [1, 2, 3], "file type": sorted(FILE_KINDS)}
    assert result.interest["open_any_path"]["container"] == IN_CONTAINER
    assert "every open selected by access, file type; any path when selected by access, file type, container" in result.text()
