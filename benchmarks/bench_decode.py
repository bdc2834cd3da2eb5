"""Decoder CPU per kernel record, on a realistic clone+exec+exit stream, in one run.

Three streams, replayed R times each through the Decoder:
- `loop`: what benchmarks/bench_exec.py makes: a long-running loop forks and execs
  /bin/true with the same argv and environment every time (built from the ABI mirror, no
  root needed);
- `opens`: openat records of one process, half succeeded, half failed (ABI mirror too);
- `kernel` (root only): the records of N `/bin/true <i>` fork+execs captured from the
  running kernel (unique argv, all processes of the host).
The processes a stream names but does not create (the loop itself, the host's daemons) are
installed in the table first, as the agent's /proc bootstrap would have.

Figures are CPU time of this thread (time.thread_time_ns), not wall clock, so other load on
the machine does not inflate them: per opcode (each decode timed, minus the cost of the
timer itself) and the mean over the mix (the whole replay timed at once). The best of R
repeats is kept. "decoder" uses a null process table (the decoder alone), "decoder+table"
the real ProcessTable (what the agent pays).

Run: .venv/bin/python -m benchmarks.bench_decode [--execs N] [--repeats R] [--no-kernel]
"""

from __future__ import annotations

import argparse
import os
import stat
import struct
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable

from sentinel.config import Config
from sentinel.enrich.proctable import ProcessTable
from sentinel.events import abi
from sentinel.events.decode import Decoder
from sentinel.events.model import Event, Process

OP_NAMES = {
    abi.OP_EXEC: "exec", abi.OP_EXEC_FAILED: "exec_failed", abi.OP_CLONE: "clone", abi.OP_EXIT: "exit",
    abi.OP_CHDIR: "chdir", abi.OP_SYSCALL: "syscall",
}  # fmt: skip
_HEADER = abi.HEADER.struct.unpack_from
_CLONE = abi.CLONE.struct.unpack_from
_CLONE_PARENT = abi.CLONE.names.index("parent_pid"), abi.CLONE.names.index("parent_start_ns")


class NullTable:
    """Answers like the process table without keeping anything: isolates the decoder's cost."""

    def on_exec(self, event, parent_start_ns=0, cgroups_key=0):
        return event.proc

    def on_fork(self, *args, **kwargs):
        return None

    def on_exit(self, *args):
        return None

    def on_chdir(self, pid, start_ns, cwd):
        return Process(pid, start_ns)

    def lookup(self, pid, start_ns=0):
        return Process(pid, start_ns)


def pack(layout: abi.Layout, tail: bytes = b"", **values) -> bytes:
    """A record of `layout` (fields not given are 0; `hdr__x` names header field `hdr.x`)."""
    fields = {name: (b"" if fmt.endswith("s") else 0) for name, fmt in layout.fields}
    fields.update({name.replace("__", "."): value for name, value in values.items()})
    fields["hdr.abi"] = abi.ABI_VERSION
    fields["hdr.size"] = layout.size + len(tail)
    return layout.struct.pack(*(fields[name] for name in layout.names)) + tail


def _components(path: str) -> bytes:
    """A path as the kernel sends it: components leaf first, each NUL-terminated."""
    return b"".join(part.encode() + b"\0" for part in reversed(path.strip("/").split("/")) if part)


def loop_records(execs: int, loop_pid: int = 40_000, loop_start_ns: int = 10**12) -> list[bytes]:
    """clone, exec, exit records of `execs` fork+execs of /bin/true by one loop process,
    with the fields the kernel fills for bench_exec's loop (same argv and environment)."""
    filename = b"/bin/true\0"
    exepath = _components("/usr/bin/true")
    cwd = _components("/root/work")
    argv = b"/bin/true\0"
    env = b"PATH=/usr/bin:/bin\0"
    tail = filename + exepath + cwd + argv + env
    caps = (1 << 41) - 1
    common = dict(hdr__cgroup_id=4242, hdr__cpu=1)
    records = []
    boot_ns = loop_start_ns + 10**9
    for n in range(execs):
        child = loop_pid + 1 + n % 30_000
        child_start = boot_ns + 1_000
        records.append(
            pack(
                abi.CLONE,
                hdr__op=abi.OP_CLONE, hdr__boot_ns=boot_ns, hdr__start_ns=child_start, hdr__pid=child,
                hdr__tid=child, hdr__comm=b"exec_loop", parent_pid=loop_pid, parent_tid=loop_pid,
                parent_start_ns=loop_start_ns, clone_flags=0x1200011, syscall=abi.SYSCALL_CLONE, vpid=child,
                **common,
            )  # fmt: skip
        )
        records.append(
            pack(
                abi.EXEC, tail,
                hdr__op=abi.OP_EXEC, hdr__boot_ns=boot_ns + 50_000, hdr__start_ns=child_start, hdr__pid=child,
                hdr__tid=child, hdr__comm=b"true", ppid=loop_pid, old_pid=child, parent_start_ns=loop_start_ns,
                loginuid=0xFFFFFFFF, vpid=child, pgid=loop_pid, vpgid=loop_pid, sid=900, tty=(136 << 20) | 1,
                cap_permitted=caps, cap_effective=caps, exe_ino=260958, exe_dev=(254 << 20) | 1,
                exe_mode=stat.S_IFREG | 0o755, exe_mtime_ns=1663687647 * 10**9, exe_ctime_ns=1663687647 * 10**9,
                filename_len=len(filename), exepath_len=len(exepath), cwd_len=len(cwd), args_len=len(argv),
                env_len=len(env), cgroups_key=0xFFFF888100AB0000, **common,
            )  # fmt: skip
        )
        records.append(
            pack(
                abi.EXIT,
                hdr__op=abi.OP_EXIT, hdr__boot_ns=boot_ns + 400_000, hdr__start_ns=child_start, hdr__pid=child,
                hdr__tid=child, hdr__comm=b"true", **common,
            )  # fmt: skip
        )
        boot_ns += 800_000
    return records


def open_records(count: int, pid: int = 40_000, start_ns: int = 10**12) -> list[bytes]:
    """openat records of one process: half open /etc/ld.so.cache, half fail on a relative
    name (the kernel then sends the directory it was relative to)."""
    openat = 257
    records = []
    for n in range(count):
        common = dict(
            hdr__op=abi.OP_SYSCALL, hdr__boot_ns=start_ns + n * 10_000, hdr__start_ns=start_ns, hdr__pid=pid,
            hdr__tid=pid, hdr__comm=b"loader", nr=openat,
        )  # fmt: skip
        if n % 2:
            name = b"/etc/ld.so.cache"
            records.append(
                pack(
                    abi.SYSCALL, name + name + b"\0", res=5, fd=5, flags=abi.F_SYS_FD, fd_mode=0o100644, fd_ino=1234,
                    args=struct.pack("<6q", -100, 0, 0o2000000, 0, 0, 0), path_len=len(name), str0_len=len(name) + 1,
                    **common,
                )  # fmt: skip
            )
        else:
            name, base = b"libfoo.so.1\0", b"/usr/lib/x86_64-linux-gnu"
            records.append(
                pack(
                    abi.SYSCALL, name + base, res=-2, fd=-1, args=struct.pack("<6q", -100, 0, 0o2000000, 0, 0, 0),
                    str0_len=len(name), base_len=len(base), **common,
                )  # fmt: skip
            )
    return records


def capture(execs: int) -> list[bytes]:
    """The records of `execs` runs of `/bin/true <i>`, from the running kernel (root)."""
    from sentinel.events.interest import Interest
    from sentinel.sensor import Sensor

    sensor = Sensor(Config(), Interest())
    sensor.start(bootstrap=False)
    records = []
    decode = sensor.decoder.decode

    def keep(data):
        records.append(data)
        return decode(data)

    sensor.decoder.decode = keep
    try:
        for i in range(execs):
            subprocess.run(["/bin/true", str(i)], check=True)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            sensor.poll(0.1)
    finally:
        sensor.close()
    return records


def preexisting(records: list[bytes]) -> list[tuple[int, int]]:
    """Exec ids the records name (as a clone's parent or a record's process) before any
    clone record creates them: what was running when the stream started."""
    born: set[tuple[int, int]] = set()
    needed: dict[tuple[int, int], None] = {}
    for record in records:
        header = _HEADER(record)
        if header[0] == abi.OP_CLONE:
            fields = _CLONE(record)
            parent = (fields[_CLONE_PARENT[0]], fields[_CLONE_PARENT[1]])
            if parent not in born:
                needed.setdefault(parent)
        exec_id = (header[6], header[4])
        if header[0] != abi.OP_CLONE and exec_id not in born:
            needed.setdefault(exec_id)
        if header[0] == abi.OP_CLONE:
            born.add(exec_id)
    return list(needed)


def seeded_table(records: list[bytes]) -> Callable[[], ProcessTable]:
    """A factory of tables holding the stream's pre-existing processes (shaped like this
    process as /proc shows it), as the agent's bootstrap would."""
    config = Config().sensor
    needed = preexisting(records)
    model = ProcessTable(config).procfs.read(os.getpid())
    assert model is not None

    def make() -> ProcessTable:
        table = ProcessTable(config)
        for pid, start_ns in needed:
            proc = model.copy_for_fork(pid, start_ns)
            proc.ppid = 1
            table.on_exec(Event("execve", proc, boot_ns=start_ns))
        return table

    return make


def _timer_cost_ns() -> float:
    clock = time.thread_time_ns
    best = float("inf")
    for _ in range(5):
        started = clock()
        for _ in range(10_000):
            clock()
        best = min(best, (clock() - started) / 10_000)
    return best


def cpu_per_record(records: list[bytes], make_table, repeats: int) -> tuple[dict[int, float], float]:
    """Best CPU microseconds per record of each opcode, and per record over the whole mix."""
    clock = time.thread_time_ns
    overhead = _timer_cost_ns()
    ops = [_HEADER(record)[0] for record in records]
    best: dict[int, float] = {}
    best_mean = float("inf")
    for _ in range(repeats):
        decode = Decoder(make_table(), lambda ns: ns).decode
        spent: dict[int, int] = defaultdict(int)
        counts: dict[int, int] = defaultdict(int)
        for op, record in zip(ops, records):
            started = clock()
            decode(record)
            spent[op] += clock() - started
            counts[op] += 1
        for op, total in spent.items():
            best[op] = min(best.get(op, float("inf")), (total / counts[op] - overhead) / 1e3)
        decode = Decoder(make_table(), lambda ns: ns).decode
        started = clock()
        for record in records:
            decode(record)
        best_mean = min(best_mean, (clock() - started) / len(records) / 1e3)
    return best, best_mean


def report(name: str, records: list[bytes], repeats: int) -> None:
    counts: dict[int, int] = defaultdict(int)
    for record in records:
        counts[_HEADER(record)[0]] += 1
    alone, alone_mean = cpu_per_record(records, NullTable, repeats)
    with_table, table_mean = cpu_per_record(records, seeded_table(records), repeats)
    print("stream %s: %d records (CPU us per record, best of %d)" % (name, len(records), repeats))
    print("  %-12s %8s %12s %16s" % ("record", "count", "decoder", "decoder+table"))
    for op in sorted(counts):
        print("  %-12s %8d %12.2f %16.2f" % (OP_NAMES.get(op, op), counts[op], alone[op], with_table[op]))
    lifecycle = [op for op in (abi.OP_CLONE, abi.OP_EXEC, abi.OP_EXIT) if op in with_table]
    if lifecycle:
        print(
            "  mean of clone/exec/exit: decoder %.2f us, decoder+table %.2f us"
            % (
                sum(alone[op] for op in lifecycle) / len(lifecycle),
                sum(with_table[op] for op in lifecycle) / len(lifecycle),
            )
        )
    print("  whole mix, timed at once: decoder %.2f us, decoder+table %.2f us per record" % (alone_mean, table_mean))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--execs", type=int, default=10_000, help="fork+execs per stream (past 8,192 the exited bound works)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-kernel", action="store_true", help="skip the stream captured from the kernel")
    options = parser.parse_args()
    report("loop (bench_exec's /bin/true loop)", loop_records(options.execs), options.repeats)
    report("opens (openat, half of them failed)", open_records(options.execs), options.repeats)
    if not options.no_kernel and os.geteuid() == 0:
        report("kernel (/bin/true <i>, captured)", capture(options.execs), options.repeats)


if __name__ == "__main__":
    main()
