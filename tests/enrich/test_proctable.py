"""Process table semantics on a fake /proc: exec, fork, exit, pid reuse, eviction, reconcile."""

from __future__ import annotations

import pytest
from fakeproc import TICK_NS, make_root, make_table

from sentinel.enrich.proctable import is_placeholder
from sentinel.errors import ConfigError
from sentinel.events.model import Event, Process


def kernel_exec(pid: int, start_ns: int, ppid: int, comm: str, *args: str, **fields) -> Event:
    """An exec as the sensor builds it: kernel fields only, no names, no cgroup path."""
    proc = Process(pid, start_ns, ppid=ppid, comm=comm, exe=comm, exepath="/usr/bin/" + comm, args=args, **fields)
    proc.exec_syscall = "execve"
    return Event("execve", proc, boot_ns=start_ns + 1000)


@pytest.fixture
def host(fake_proc):
    """pid 1 (init), 100 (bash, child of 1), 200 (sleep, child of 100)."""
    fake_proc.add(1, ppid=0, comm="init", start_ticks=1)
    fake_proc.add(100, ppid=1, comm="bash", start_ticks=500, uid=1000)
    fake_proc.add(200, ppid=100, comm="sleep", start_ticks=900, argv=("sleep", "60"), uid=1000)
    return fake_proc


@pytest.fixture
def table(host, fake_clock):
    table = make_table(host, fake_clock, process_exit_grace_seconds=5.0)
    table.bootstrap()
    return table


def test_bootstrap_links_ancestry_and_resolves_names(table):
    sleep = table.lookup(200)
    assert sleep.from_proc and sleep.args == ("60",)
    assert [p.pid for p in sleep.ancestors()] == [100, 1]
    assert sleep.user_name == "alice"
    assert sleep.container_id == "host"
    assert table.stats()["live"] == 3


def test_bootstrap_orders_parents_first_even_when_a_parent_started_later(fake_proc, fake_clock):
    # pid 300 was reparented to a subreaper (pid 400) that started after it
    fake_proc.add(1, ppid=0, comm="init", start_ticks=1)
    fake_proc.add(300, ppid=400, comm="orphan", start_ticks=100)
    fake_proc.add(400, ppid=1, comm="reaper", start_ticks=200)
    table = make_table(fake_proc, fake_clock)
    events = table.bootstrap()
    assert [e.proc.pid for e in events] == [1, 300, 400]
    orphan = table.lookup(300)
    assert orphan.parent is table.lookup(400)
    assert orphan.parent.parent is table.lookup(1)


def test_exec_replaces_the_image_and_repoints_children(table):
    bash = table.lookup(100)
    precise_start = bash.start_ns + 1234  # the kernel's value, inside the tick
    event = kernel_exec(100, precise_start, 1, "python3", "app.py", uid=1000, euid=0, gid=4242, egid=0)
    stored = table.on_exec(event)
    assert stored is event.proc and table.lookup(100) is stored
    assert stored is not bash
    assert stored.start_ns == precise_start
    assert stored.parent is table.lookup(1)
    assert stored.user_name == "alice" and stored.group_name == ""
    assert stored.cgroup == "/user.slice" and stored.container_id == "host"
    assert stored.cwd == "/"  # the kernel record had none: kept from the previous image
    assert table.lookup(200).parent is stored  # pname follows the parent's new image
    assert table.lookup(100, precise_start) is stored


def test_from_proc_start_is_replaced_by_the_kernels_precise_value(table):
    sleep = table.lookup(200)
    assert sleep.start_ns == 900 * TICK_NS
    assert table.lookup(200, 900 * TICK_NS + 7_654_321) is sleep
    assert sleep.start_ns == 900 * TICK_NS + 7_654_321


def test_fork_copies_the_parent_and_threads_are_ignored(table):
    bash = table.lookup(100)
    assert table.on_fork(100, bash.start_ns, 101, 0, is_thread=True, boot_ns=10**12) is None
    assert table.stats()["live"] == 3
    child = table.on_fork(100, bash.start_ns, 150, 10**12, is_thread=False, vpid=150)
    assert child.comm == "bash" and child.user_name == "alice"
    assert child.parent is bash and child.ppid == 100 and child.start_ns == 10**12
    assert not child.from_proc and child.exec_syscall == ""
    assert table.lookup(150, 10**12) is child
    # a fork record arriving after /proc already gave us the child keeps that entry
    assert table.on_fork(100, bash.start_ns, 150, 10**12 + 5, is_thread=False) is child


def test_fork_without_start_uses_the_event_time(table):
    bash = table.lookup(100)
    child = table.on_fork(100, bash.start_ns, 151, 0, is_thread=False, boot_ns=5 * 10**12)
    assert child.start_ns == 5 * 10**12


def test_exit_keeps_the_process_for_late_events_then_expires(table, host, fake_clock):
    sleep = table.lookup(200)
    host.remove(200)
    assert table.on_exit(200, sleep.start_ns, 0, 9) is sleep
    assert sleep.exited and sleep.exit_signal == 9
    assert table.lookup(200, sleep.start_ns) is sleep  # a late event
    assert table.lookup(200) is sleep
    fake_clock.now += 6
    table.reconcile()  # sweeps expired entries
    gone = table.lookup(200, sleep.start_ns)
    assert is_placeholder(gone)
    assert gone.comm == "" and gone.container_id == "" and gone.parent is None
    assert table.stats()["placeholders"] >= 1


def test_exited_parent_is_kept_while_it_has_live_children(table, host, fake_clock):
    bash = table.lookup(100)
    sleep = table.lookup(200)
    host.remove(100)
    table.on_exit(100, bash.start_ns, 0, 0)
    fake_clock.now += 60
    table.reconcile()
    assert table.lookup(100, bash.start_ns) is bash  # kept: sleep still runs
    assert sleep.parent is bash and bash.parent is table.lookup(1)
    host.remove(200)
    table.on_exit(200, sleep.start_ns, 0, 0)
    fake_clock.now += 60
    table.reconcile()
    assert is_placeholder(table.lookup(100, bash.start_ns))
    assert bash.parent is None  # dropped with no live children: it let go of its ancestry


def test_pid_reuse_is_detected_by_start_time(table, host):
    old = table.lookup(200)
    host.remove(200)
    host.add(200, ppid=1, comm="ls", start_ticks=5000)  # exit and new fork both missed
    new = table.lookup(200, 5000 * TICK_NS + 42)
    assert new is not old and new.comm == "ls" and new.start_ns == 5000 * TICK_NS + 42
    assert old.exited
    assert table.lookup(200, old.start_ns) is old  # a late event of the old process
    assert table.stats()["refreshed"] == 1
    # the kernel exec of a reused pid retires the entry it replaces
    event = kernel_exec(200, 9000 * TICK_NS, 1, "cat")
    assert table.on_exec(event) is event.proc
    assert new.exited and table.lookup(200, new.start_ns) is new


def test_lookup_reads_proc_for_unknown_pids_and_placeholders_for_gone_ones(table, host):
    host.add(700, ppid=200, comm="child", start_ticks=2000)
    child = table.lookup(700)
    assert child.comm == "child" and child.parent is table.lookup(200)
    assert table.stats()["misses"] == 1
    gone = table.lookup(701, 123)
    assert is_placeholder(gone) and gone.pid == 701 and gone.uid == 0xFFFFFFFF
    assert table.lookup(701) is not gone  # placeholders are not stored


def test_exec_of_an_unknown_parent_reads_it_from_proc(table, host):
    host.add(800, ppid=100, comm="make", start_ticks=3000)
    proc = table.on_exec(kernel_exec(801, 4000 * TICK_NS, 800, "cc"))
    assert proc.parent.comm == "make" and proc.parent.parent is table.lookup(100)


def test_exec_never_links_to_a_newer_process_that_reused_the_parents_pid(table):
    bash = table.lookup(100)  # started at tick 500
    orphan = table.on_exec(kernel_exec(701, 6000 * TICK_NS, 100, "job"), parent_start_ns=400 * TICK_NS)
    assert orphan.parent is None and bash not in list(orphan.ancestors())
    linked = table.on_exec(kernel_exec(702, 6001 * TICK_NS, 100, "job"), parent_start_ns=bash.start_ns + 5)
    assert linked.parent is bash


def test_exec_in_a_container_resolves_container_and_users(table, host, tmp_path):
    root = make_root(
        tmp_path / "ctr", "root:x:0:0::/:/bin/sh\nweb:x:1000:1000::/:/bin/sh\n", "root:x:0:\nweb:x:1000:\n"
    )
    cid = "ab" * 32
    host.add(900, ppid=1, comm="nginx", start_ticks=4000, root=root, cgroup="0::/system.slice/docker-%s.scope\n" % cid)
    proc = table.on_exec(
        kernel_exec(900, 4000 * TICK_NS, 1, "nginx", euid=1000, egid=1000, uid=1000, gid=1000, cgroup_id=77)
    )
    assert proc.container_id == cid[:12]
    assert proc.cgroup == "/system.slice/docker-%s.scope" % cid
    assert (proc.user_name, proc.group_name) == ("web", "web")  # "alice" on the host


def test_kernel_cgroup_path_is_kept(table):
    proc = table.on_exec(kernel_exec(100, table.lookup(100).start_ns, 1, "x", cgroup="/given", container_id="c0ffee"))
    assert (proc.cgroup, proc.container_id) == ("/given", "c0ffee")


def test_credentials_and_cwd_are_updated_in_place(table):
    sleep = table.lookup(200)
    assert table.update_creds(200, sleep.start_ns, euid=0, egid=0) is sleep
    assert (sleep.uid, sleep.euid, sleep.egid) == (1000, 0, 0)
    assert (sleep.user_name, sleep.group_name) == ("alice", "root")  # names follow the real ids
    table.update_creds(200, sleep.start_ns, uid=0, gid=50)
    assert (sleep.uid, sleep.gid, sleep.user_name, sleep.group_name) == (0, 50, "root", "staff")
    assert table.on_chdir(200, sleep.start_ns, "/tmp").cwd == "/tmp"
    assert is_placeholder(table.update_creds(4321, 99, uid=0))


def test_reconcile_drops_dead_and_adds_missing(table, host):
    sleep = table.lookup(200)
    host.remove(200)
    host.add(300, ppid=100, comm="vim", start_ticks=7000)
    host.add(301, ppid=300, comm="sh", start_ticks=7001)
    changed = table.reconcile()
    assert changed == 3
    assert sleep.exited
    assert table.lookup(301).parent is table.lookup(300)
    assert table.stats()["reconciled"] == 3
    assert table.reconcile() == 0


def test_reconcile_replaces_a_reused_pid(table, host):
    old = table.lookup(200)
    host.add(200, ppid=1, comm="new", start_ticks=8000)
    assert table.reconcile() == 2
    assert old.exited and table.lookup(200).comm == "new"


def test_zombies_are_known_as_exited(table, host):
    host.add(600, ppid=100, comm="defunct", start_ticks=6000, state="Z", argv=())
    zombie = table.lookup(600, 6000 * TICK_NS + 5)
    assert zombie.exited and zombie.comm == "defunct" and zombie.parent is table.lookup(100)
    assert zombie.start_ns == 6000 * TICK_NS + 5
    assert table.lookup(600, 6000 * TICK_NS + 5) is zombie
    assert 600 not in [p.pid for p in table.processes()]
    assert table.reconcile() == 0  # still listed by /proc, but not new


def test_a_second_bootstrap_keeps_the_kernels_precise_starts(table):
    precise = 900 * TICK_NS + 123_456
    sleep = table.lookup(200, precise)
    table.bootstrap()
    again = table.lookup(200)
    assert again is not sleep and again.start_ns == precise


def test_the_table_reconciles_by_itself_when_due(table, host, fake_clock):
    sleep = table.lookup(200)
    host.remove(200)
    bash = table.lookup(100)
    table.on_fork(100, bash.start_ns, 101, 10**13, False)
    assert not sleep.exited  # not due yet
    fake_clock.now += 31
    table.on_fork(100, bash.start_ns, 102, 10**13 + 1, False)
    assert sleep.exited and table.stats()["reconciled"] >= 1


def test_reconcile_runs_in_slices_between_events(host, fake_clock):
    for pid in range(10, 20):
        host.add(pid, ppid=1, comm="d%d" % pid, start_ticks=pid)
    table = make_table(host, fake_clock)
    table.bootstrap()
    table.reconcile_slice = 4
    for pid in range(10, 20):
        host.remove(pid)
    host.add(30, ppid=1, comm="new", start_ticks=3000)
    fake_clock.now += 31
    steps = 0
    while table.maybe_reconcile():
        steps += 1
        fake_clock.now += 0.1  # the gap between slices
        assert steps < 10
    # 13 live entries in slices of 4, then the pass completes with the missing one added
    assert steps == 4
    assert table.lookup(30).comm == "new" and table.stats()["misses"] == 0  # added by the pass
    assert [table.lookup(pid).exited for pid in range(10, 20)] == [True] * 10
    assert table.stats()["reconciled"] == 11


def test_maybe_reconcile_runs_on_its_period(table, fake_clock):
    assert not table.maybe_reconcile()
    fake_clock.now += 31
    assert table.maybe_reconcile()
    assert not table.maybe_reconcile()


def test_eviction_bound_under_100k_processes(fake_proc, fake_clock):
    """100k short-lived processes, ~500 alive at a time, in a table of 1000 entries."""
    fake_proc.add(1, ppid=0, comm="init", start_ticks=1)
    table = make_table(fake_proc, fake_clock, process_table_max=1000, process_exit_grace_seconds=5.0)
    table.bootstrap()
    init = table.lookup(1)
    shell = table.on_fork(1, init.start_ns, 2, 10**9, False)
    running = []
    largest = 0
    for n in range(100_000):
        pid = 10 + n % 30_000
        start = 2 * 10**9 + n
        table.on_fork(2, shell.start_ns, pid, start, False)
        running.append(table.on_exec(kernel_exec(pid, start, 2, "job%d" % n)))
        if len(running) > 500:
            done = running.pop(0)
            table.on_exit(done.pid, done.start_ns, 0, 0)
        largest = max(largest, len(table))
        fake_clock.now += 0.0001  # 10 s in all: the grace period expires along the way
    assert largest <= 1000
    stats = table.stats()
    assert stats["evicted"] > 0 and stats["live"] == 502
    # exited entries went first: the live ones are all still there, ancestry intact
    assert table.lookup(2) is shell and table.lookup(1) is init
    for proc in running:
        assert table.lookup(proc.pid, proc.start_ns) is proc
        assert proc.parent is shell and shell.parent is init
    assert stats["misses"] == 0 and stats["placeholders"] == 0
    # the most recently exited ones still resolve for their late events
    late = table.lookup(10 + 99_400 % 30_000, 2 * 10**9 + 99_400)
    assert late.exited and late.comm == "job99400"


def test_overflow_of_live_processes_evicts_the_oldest_which_come_back_from_proc(fake_proc, fake_clock):
    fake_proc.add(1, ppid=0, comm="init", start_ticks=1)
    for pid in range(10, 30):
        fake_proc.add(pid, ppid=1, comm="d%d" % pid, start_ticks=pid)
    table = make_table(fake_proc, fake_clock, process_table_max=10)
    table.bootstrap()
    assert len(table) == 10 and table.stats()["evicted"] == 11
    init = table.lookup(1)
    assert init.comm == "init" and table.stats()["misses"] == 0  # a parent: kept
    assert table.lookup(10).comm == "d10"  # a leaf, evicted first: read again from /proc
    assert table.lookup(10).parent is init
    assert table.stats()["misses"] == 1 and len(table) == 10


def test_table_max_must_be_positive(fake_proc, fake_clock):
    with pytest.raises(ConfigError, match="process_table_max"):
        make_table(fake_proc, fake_clock, process_table_max=0)


def _run_children(table, parent, pids, start_ns=10**12):
    """fork + exec + exit of one child per pid; their exec ids, in exit order."""
    ids = []
    for n, pid in enumerate(pids):
        start = start_ns + n * 1000
        table.on_fork(parent.pid, parent.start_ns, pid, start, False)
        table.on_exec(kernel_exec(pid, start, parent.pid, "true"))
        assert table.on_exit(pid, start, 0, 0).exited
        ids.append((pid, start))
    return ids


def test_exited_processes_are_bounded_by_count_oldest_first(host, fake_clock):
    table = make_table(host, fake_clock, process_exit_grace_seconds=5.0, process_exited_max=3)
    table.bootstrap()
    bash = table.lookup(100)
    ids = _run_children(table, bash, range(1000, 1010))
    assert table.stats()["exited"] == 3 and table.stats()["trimmed"] == 7
    for pid, start in ids[-3:]:
        kept = table.lookup(pid, start)
        assert kept.exited and kept.start_ns == start and kept.parent is bash
    for pid, start in ids[:-3]:
        assert is_placeholder(table.lookup(pid, start))


def test_a_trimmed_process_keeps_its_ancestry_for_events_in_flight(host, fake_clock):
    table = make_table(host, fake_clock, process_exited_max=1)
    table.bootstrap()
    bash = table.lookup(100)
    table.on_fork(100, bash.start_ns, 1000, 10**12, False)
    first = table.on_exec(kernel_exec(1000, 10**12, 100, "true"))
    table.on_exit(1000, 10**12, 0, 0)
    _run_children(table, bash, [1001, 1002])
    assert is_placeholder(table.lookup(1000, 10**12))
    assert first.parent is bash


def test_the_count_bound_keeps_exited_parents_of_live_children(host, fake_clock):
    table = make_table(host, fake_clock, process_exited_max=2)
    table.bootstrap()
    bash = table.lookup(100)
    sleep = table.lookup(200)
    table.on_exit(100, bash.start_ns, 0, 0)  # bash exits, its child sleep runs on
    _run_children(table, table.lookup(1), range(1000, 1010))
    assert table.lookup(100, bash.start_ns) is bash
    assert sleep.parent is bash and bash.parent is table.lookup(1)
    # a late exec of the running child still links to its exited parent
    table.on_exec(kernel_exec(200, sleep.start_ns, 100, "ls"), parent_start_ns=bash.start_ns)
    assert table.lookup(200).parent is bash


def test_with_no_room_for_exited_processes_the_exit_still_resolves(host, fake_clock):
    table = make_table(host, fake_clock, process_exited_max=0)
    table.bootstrap()
    sleep = table.lookup(200)
    assert table.on_exit(200, sleep.start_ns, 3, 0) is sleep
    assert sleep.exited and sleep.exit_code == 3 and sleep.parent is table.lookup(100)


def test_a_negative_exited_bound_is_a_configuration_error(fake_proc, fake_clock):
    with pytest.raises(ConfigError, match="process_exited_max"):
        make_table(fake_proc, fake_clock, process_exited_max=-1)


def test_an_exited_process_lasts_the_whole_grace_period_however_its_exit_was_batched(host, fake_clock):
    table = make_table(host, fake_clock, process_exit_grace_seconds=5.0)
    table.bootstrap()
    bash = table.lookup(100)
    first = _run_children(table, bash, [1000])[0]
    fake_clock.now += 0.09  # within one run of exits: both are recorded at the first one's time
    second = _run_children(table, bash, [1001], start_ns=2 * 10**12)[0]
    fake_clock.now += 4.95  # 4.95 s after the second exit
    table.reconcile()
    assert not is_placeholder(table.lookup(*second))
    fake_clock.now += 0.2
    table.reconcile()
    assert is_placeholder(table.lookup(*first)) and is_placeholder(table.lookup(*second))


def test_exit_bookkeeping_stays_bounded_under_a_steady_exec_stream(host, fake_clock):
    table = make_table(host, fake_clock, process_exit_grace_seconds=1.0, process_exited_max=100)
    table.bootstrap()
    bash = table.lookup(100)
    for n in range(50):
        _run_children(table, bash, range(1000, 1100), start_ns=10**12 + n * 10**6)
        fake_clock.now += 0.05
    assert table.stats()["exited"] == 100
    assert len(table._exit_order) == 100 and len(table._exit_epochs) <= 21
