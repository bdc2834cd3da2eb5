"""The BTF header tree: built once per session into a scratch cache, then used for real."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess

import pytest

from sentinel.errors import KernelError
from sentinel.kernel import headers


@pytest.fixture(scope="session")
def cold_tree(tmp_path_factory):
    """A tree built from nothing, so the build itself (and its checks) runs in the suite."""
    cache = str(tmp_path_factory.mktemp("btf-cache"))
    source = headers.btf_tree(cache)
    print("\ncold BTF tree build: %.1f s (%s)" % (source.build_seconds, source.path))
    return cache, source


@pytest.fixture
def tree_env(cold_tree, monkeypatch):
    """Route every headers call of one test to the session's scratch cache."""
    cache, source = cold_tree
    monkeypatch.setenv(headers.CACHE_DIR_ENV, cache)
    monkeypatch.setattr(headers, "headers_dir", lambda: None)
    headers._kernel_source_cached.cache_clear()
    yield source
    headers._kernel_source_cached.cache_clear()


@pytest.mark.kernel
def test_cold_build_reports_its_time_and_checks(cold_tree):
    _, source = cold_tree
    assert source.kind == "btf" and not source.cache_hit
    assert source.build_seconds and source.build_seconds > 1
    with open(os.path.join(source.path, headers.BUILD_REPORT)) as f:
        report = json.load(f)
    # the layout check covered the kernel's structs, and the packed-enum fix was needed
    assert report["layout_asserts"] > 10000
    assert report["enums_resized"], "expected kernel __packed enums to be resized"
    assert report["padding_barriers"] > 0


@pytest.mark.kernel
def test_second_ensure_is_a_cache_hit(cold_tree, monkeypatch):
    cache, source = cold_tree
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    again = headers.btf_tree(cache)
    assert again.cache_hit and again.path == source.path and again.build_seconds is None
    assert headers.ensure_tree(cache) == source.path
    assert os.environ["BCC_KERNEL_SOURCE"] == source.path


PROCESS_FACTS = r"""
struct snt_facts { u64 ino; u64 blocks; u64 size; u32 ppid; u32 have_bprm_executable; };
BPF_HASH(snt_t_facts, u32, struct snt_facts);
int snt_t_exec(struct tracepoint__sched__sched_process_exec *args) {
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct snt_facts facts = {};
    struct inode *inode = task->mm->exe_file->f_inode;
    facts.ino = inode->i_ino;
    facts.blocks = inode->i_blocks;      /* after a __packed enum member: fix a */
    facts.size = inode->i_size;
    facts.ppid = task->real_parent->tgid;
#ifdef SENTINEL_HAVE_BPRM_EXECUTABLE
    facts.have_bprm_executable = 1;
#endif
    snt_t_facts.update(&pid, &facts);
    return 0;
}
"""


@pytest.mark.kernel
def test_struct_offsets_are_right_at_runtime(tree_env):
    bpf = headers.load_bpf("#include <linux/sched.h>\n#include <linux/not_in_any_tree.h>\n" + PROCESS_FACTS)
    try:
        bpf.attach_tracepoint(tp=b"sched:sched_process_exec", fn_name=b"snt_t_exec")
        child = subprocess.Popen(["/bin/sleep", "0.05"])
        child.wait()
        facts = bpf[b"snt_t_facts"][ctypes.c_uint(child.pid)]
    finally:
        bpf.cleanup()
    st = os.stat("/bin/sleep")
    assert facts.ppid == os.getpid()
    assert (facts.ino, facts.blocks, facts.size) == (st.st_ino, st.st_blocks, st.st_size)
    assert facts.have_bprm_executable == 1


@pytest.mark.kernel
def test_kernel_source_prefers_real_headers(tmp_path, monkeypatch):
    (tmp_path / "include").mkdir()
    monkeypatch.setattr(headers, "headers_dir", lambda: str(tmp_path))
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "untouched")
    headers._kernel_source_cached.cache_clear()
    try:
        source = headers.kernel_source(str(tmp_path / "cache"))
    finally:
        headers._kernel_source_cached.cache_clear()
    assert source == headers.KernelSource("headers", str(tmp_path), None, False)
    assert os.environ["BCC_KERNEL_SOURCE"] == "untouched"
    assert not (tmp_path / "cache").exists()


def test_fix_includes_drops_only_what_nothing_provides(tmp_path):
    (tmp_path / "include" / "linux").mkdir(parents=True)
    (tmp_path / "include" / "linux" / "sched.h").write_text("")
    text = '#include <linux/sched.h>\n  #include <net/missing.h> // why\n#include <bcc/proto.h>\n#include "local.h"\n'
    fixed = headers.fix_includes(text, str(tmp_path)).splitlines()
    assert fixed[0] == "#include <linux/sched.h>"
    assert fixed[1] == "/* sentinel: dropped #include <net/missing.h> // why */"
    assert fixed[2:] == ["#include <bcc/proto.h>", '#include "local.h"']
    own = tmp_path / "own" / "net"
    own.mkdir(parents=True)
    (own / "missing.h").write_text("")
    assert "dropped" not in headers.fix_includes(text, str(tmp_path), [str(tmp_path / "own")])


FAKE_BTF = [
    {"kind": "STRUCT", "name": "linux_binprm", "members": [{"name": "file"}, {"name": "executable"}]},
    {"kind": "UNION", "name": "u", "members": [{"name": "a"}]},
    {"kind": "ENUM", "name": "bpf_map_type", "values": [{"name": "BPF_MAP_TYPE_RINGBUF", "val": 27}]},
    {"kind": "FUNC", "name": "bpf_lsm_file_open"},
]


@pytest.mark.parametrize(
    ("feature", "present"),
    [
        (headers.BtfFeature("A", "member", "linux_binprm", "executable"), True),
        (headers.BtfFeature("A", "member", "linux_binprm", "interpreter"), False),
        (headers.BtfFeature("A", "member", "task_struct", "executable"), False),
        (headers.BtfFeature("A", "type", "u"), True),
        (headers.BtfFeature("A", "type", "task_struct"), False),
        (headers.BtfFeature("A", "enumerator", "bpf_map_type", "BPF_MAP_TYPE_RINGBUF"), True),
        (headers.BtfFeature("A", "enumerator", "", "BPF_MAP_TYPE_RINGBUF"), True),
        (headers.BtfFeature("A", "enumerator", "other_enum", "BPF_MAP_TYPE_RINGBUF"), False),
        (headers.BtfFeature("A", "func", "bpf_lsm_file_open"), True),
        (headers.BtfFeature("A", "func", "bpf_lsm_bprm_check_security"), False),
    ],
)
def test_features_present_reads_each_kind(feature, present):
    assert (headers.features_present(FAKE_BTF, [feature]) == [feature]) is present


@pytest.mark.kernel
def test_feature_cflags_come_from_this_kernels_btf(tmp_path):
    flags = headers.btf_feature_cflags(str(tmp_path))
    # bpftool is the independent witness of what this kernel's BTF holds
    dump = subprocess.run(
        ["bpftool", "btf", "dump", "file", headers.BTF_PATH, "format", "c"], capture_output=True, text=True, check=True
    ).stdout
    binprm = dump[dump.index("struct linux_binprm {") :].split("\n};", 1)[0]
    assert ("-DSENTINEL_HAVE_BPRM_EXECUTABLE" in flags) == ("*executable;" in binprm)
    assert "-DSENTINEL_HAVE_RINGBUF" in flags
    cached = list(tmp_path.glob("features-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text()) == flags


@pytest.mark.kernel
def test_feature_table_with_an_unknown_kind_is_rejected(tmp_path):
    bad = (headers.BtfFeature("SENTINEL_HAVE_X", "field", "task_struct", "pid"),)
    with pytest.raises(KernelError, match="unknown kind 'field'"):
        headers._feature_cflags_cached(str(tmp_path), headers.BTF_PATH, bad)


def test_types_embedding_a_differing_uapi_type_are_found_transitively():
    btf = [
        {"id": 1, "kind": "STRUCT", "name": "bpf_sock_ops", "members": []},
        {"id": 2, "kind": "ARRAY", "name": "(anon)", "elem_type_id": 1},
        {"id": 3, "kind": "STRUCT", "name": "(anon)", "members": [{"name": "ops", "type_id": 2}]},
        {"id": 4, "kind": "STRUCT", "name": "bpf_ctx_convert", "members": [{"name": "u", "type_id": 3}]},
        {"id": 5, "kind": "PTR", "name": "(anon)", "type_id": 1},
        {"id": 6, "kind": "STRUCT", "name": "points_only", "members": [{"name": "p", "type_id": 5}]},
    ]
    assert headers._embedders(btf, {"struct bpf_sock_ops"}) == {"#3", "struct bpf_ctx_convert"}
