"""Decoder cost per kernel record, on records captured from the running kernel, in one run.

Captures the records of N `/bin/true` fork+execs (clone, exec, exit), then replays them
through the Decoder R times and prints the best per-record cost by opcode: with a null
process table (the decoder alone) and with the real ProcessTable (what the agent pays).
The best of R repeats is reported because other load on the machine only ever adds time.

Run: .venv/bin/python -m benchmarks.bench_decode [--execs N] [--repeats R]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from collections import defaultdict

from sentinel.config import Config
from sentinel.enrich.proctable import ProcessTable
from sentinel.events import abi
from sentinel.events.decode import Decoder
from sentinel.events.interest import Interest
from sentinel.events.model import Process
from sentinel.sensor import Sensor

OP_NAMES = {abi.OP_EXEC: "exec", abi.OP_EXEC_FAILED: "exec_failed", abi.OP_CLONE: "clone", abi.OP_EXIT: "exit", abi.OP_CHDIR: "chdir"}


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


def capture(execs: int) -> list[bytes]:
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


def best_cost(records: list[bytes], make_table, repeats: int) -> dict[int, float]:
    """Best (lowest) mean microseconds per record of each opcode over `repeats` replays."""
    by_op: dict[int, list[bytes]] = defaultdict(list)
    for record in records:
        by_op[abi.PREFIX.unpack_from(record)[0]].append(record)
    best = {}
    for op, batch in by_op.items():
        for _ in range(repeats):
            table = make_table()
            decoder = Decoder(table, lambda ns: ns)
            # clones and exits need their processes: replay everything, time only this op
            elapsed = 0.0
            for record in records:
                if abi.PREFIX.unpack_from(record)[0] == op:
                    started = time.perf_counter()
                    decoder.decode(record)
                    elapsed += time.perf_counter() - started
                else:
                    decoder.decode(record)
            best[op] = min(best.get(op, float("inf")), elapsed / len(batch) * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    records = capture(options.execs)
    counts = defaultdict(int)
    for record in records:
        counts[abi.PREFIX.unpack_from(record)[0]] += 1
    alone = best_cost(records, NullTable, options.repeats)
    config = Config()
    with_table = best_cost(records, lambda: ProcessTable(config.sensor), options.repeats)
    print("%d records captured from %d fork+exec of /bin/true (all processes of the host)" % (len(records), options.execs))
    print("%-12s %8s %14s %18s" % ("record", "count", "decoder us", "decoder+table us"))
    for op in sorted(counts):
        print("%-12s %8d %14.1f %18.1f" % (OP_NAMES.get(op, op), counts[op], alone[op], with_table[op]))
    total = sum(counts.values())
    print(
        "weighted mean: decoder %.1f us, decoder+table %.1f us per record"
        % (sum(alone[op] * n for op, n in counts.items()) / total, sum(with_table[op] * n for op, n in counts.items()) / total)
    )


if __name__ == "__main__":
    main()
