"""Random sequences of kernel records against the table's invariants (hypothesis).

Whatever order forks, execs, exits, pid reuse, lookups and reconciles arrive in, the table
stays within its bound, its indexes agree with each other, and every live process's parent
link follows the parent's current image.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fakeproc import FakeClock, FakeProc, make_table
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sentinel.events.model import Event, Process

PIDS = st.integers(min_value=10, max_value=40)  # few pids: reuse is frequent


class TableMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.fake = FakeProc(Path(self.tmp.name))
        self.fake.add(1, ppid=0, comm="init", start_ticks=1)
        self.clock = FakeClock()
        self.table = make_table(
            self.fake, self.clock, process_table_max=25, process_exit_grace_seconds=2.0, process_exited_max=4
        )
        self.table.bootstrap()
        self.next_start = 10**12
        self.model: dict[int, int] = {}  # pid -> start of the live process the "kernel" has

    def teardown(self) -> None:
        self.tmp.cleanup()

    def _start(self) -> int:
        self.next_start += 10**9
        return self.next_start

    def _live_parent(self, data) -> tuple[int, int]:
        choices = sorted(self.model.items())
        if not choices:
            return 1, self.table.lookup(1).start_ns
        return data.draw(st.sampled_from(choices))

    @rule(pid=PIDS, data=st.data())
    def fork(self, pid, data) -> None:
        parent_pid, parent_start = self._live_parent(data)
        if pid == parent_pid:
            return
        start = self._start()
        child = self.table.on_fork(parent_pid, parent_start, pid, start, False)
        assert child.pid == pid and child.start_ns == start
        self.model[pid] = start

    @precondition(lambda self: self.model)
    @rule(data=st.data(), name=st.sampled_from(["sh", "ls", "cat"]))
    def exec(self, data, name) -> None:
        pid, start = data.draw(st.sampled_from(sorted(self.model.items())))
        proc = Process(pid, start, comm=name, exepath="/bin/" + name, ppid=self.table.lookup(pid, start).ppid)
        stored = self.table.on_exec(Event("execve", proc))
        assert stored is proc and self.table.lookup(pid, start) is proc

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def exit(self, data) -> None:
        pid, start = data.draw(st.sampled_from(sorted(self.model.items())))
        del self.model[pid]
        table = self.table
        live = table._live.get(pid)
        retiring = live is not None and live.start_ns == start
        exited = table.on_exit(pid, start, 0, 0)
        if exited is not None:
            assert exited.exited
        if retiring and len(table._exited) > table.exited_max:  # only parents of live processes stay over
            over = [proc for proc in table._exited.values() if proc is not exited]
            assert all(proc in table._children for proc in over)

    @rule(seconds=st.floats(min_value=0, max_value=3))
    def time_passes(self, seconds) -> None:
        self.clock.now += seconds

    @rule()
    def reconcile(self) -> None:
        # The fake /proc knows only pid 1: everything else is "gone" to it.
        self.table.reconcile()
        self.model.clear()

    @rule(pid=PIDS)
    def lookup(self, pid) -> None:
        proc = self.table.lookup(pid, self.model.get(pid, 0))
        assert proc.pid == pid

    @invariant()
    def bounded(self) -> None:
        assert len(self.table) <= 25

    @invariant()
    def indexes_agree(self) -> None:
        table = self.table
        for pid, proc in table._live.items():
            assert proc.pid == pid and not proc.exited
        for (pid, start), proc in table._exited.items():
            assert proc.exited and (proc.pid, proc.start_ns) == (pid, start)
        for pid, proc in table._last_exited.items():
            assert proc.pid == pid and (proc.pid, proc.start_ns) in table._exited
        assert set(table._exited) <= set(table._exit_order)
        assert sum(count for _start, count in table._exit_epochs) == len(table._exit_order)
        assert all(count > 0 for _start, count in table._exit_epochs)
        stored = set(map(id, table._live.values())) | set(map(id, table._exited.values()))
        for parent, children in table._children.items():
            assert id(parent) in stored
            for child in children:
                assert not child.exited and child.parent is parent
                assert table._live.get(child.pid) is child

    @invariant()
    def parents_are_current_images(self) -> None:
        for proc in self.table._live.values():
            parent = proc.parent
            if parent is not None and not parent.exited and self.table._live.get(parent.pid) is not None:
                current = self.table._live[parent.pid]
                if current.start_ns == parent.start_ns:
                    assert current is parent

    @invariant()
    def kernel_view_resolves(self) -> None:
        for pid, start in self.model.items():
            proc = self.table._live.get(pid)
            if proc is not None:  # may have been evicted under the bound
                assert proc.start_ns == start


TableMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)
test_table_invariants = TableMachine.TestCase
