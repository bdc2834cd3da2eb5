"""Every benchmark, one after another (`make bench`); each prints its own ratios and figures."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = (
    "bench_rules",
    "bench_agent_cpu",
    "bench_decode",
    "bench_proctable",
    "bench_store",
    "bench_forward",
    "bench_kernel_setup",
    "bench_exec",
    "bench_open",
    "bench_kill",
    "bench_enforce_agent",
    "bench_agent",
    "bench_tui",
)


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print("=== %s" % name, flush=True)
        if subprocess.run([sys.executable, "-m", "benchmarks." + name]).returncode != 0:
            failed.append(name)
    if failed:
        print("failed: %s" % ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
