"""What getting bcc going costs on this host: BTF tree build, cached compile, probes.

Prints, from one run:
- the cold build of the BTF header tree (into a scratch cache, so it really is cold),
- the cache-hit lookup that replaces it on every later start,
- compile+load of a small program reading task->real_parent->tgid through the cached
  tree, against the same program with the tree already resolved (the per-compile cost),
- one full `sentinel doctor` probe run.

Run: .venv/bin/python -m benchmarks.bench_kernel_setup
"""

from __future__ import annotations

import os
import tempfile
import time

from sentinel.kernel import headers, probe

PROGRAM = r"""
BPF_HASH(snt_bench_ppid, u32, u32);
int snt_bench(void *ctx) {
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    u32 pid = bpf_get_current_pid_tgid() >> 32, ppid = task->real_parent->tgid;
    snt_bench_ppid.update(&pid, &ppid);
    return 0;
}
"""


def _timed(action):
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-btf-") as cache:
        os.environ[headers.CACHE_DIR_ENV] = cache
        headers._kernel_source_cached.cache_clear()
        cold, source = _timed(lambda: headers.btf_tree(cache))
        warm, again = _timed(lambda: headers.btf_tree(cache))
        assert again.cache_hit
        print("BTF tree cold build:      %6.2f s  (%s)" % (cold, source.path))
        print("BTF tree cache hit:       %6.3f s  (%.0fx faster than building)" % (warm, cold / warm))
        first, bpf = _timed(lambda: headers.load_bpf(PROGRAM))
        bpf.cleanup()
        compiles = []
        for _ in range(3):
            seconds, bpf = _timed(lambda: headers.load_bpf(PROGRAM))
            bpf.cleanup()
            compiles.append(seconds)
        print("first compile+load:       %6.2f s  (includes feature macros from BTF)" % first)
        print(
            "cached compile+load:      %6.2f s  (best of 3; %.0f%% of a cold start)"
            % (min(compiles), 100 * min(compiles) / (cold + first))
        )
        probes, results = _timed(probe.run_probes)
        print(
            "all probes (doctor):      %6.2f s  (%d features, %d ok)"
            % (probes, len(results), sum(r.ok for r in results))
        )


if __name__ == "__main__":
    main()
