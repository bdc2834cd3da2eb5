"""Decoder: records built from the ABI mirror -> Events and process-table calls."""

from __future__ import annotations

import stat

from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.events import abi
from sentinel.events.decode import Decoder, exe_writable
from sentinel.events.model import Process

OFFSET_NS = 1_700_000_000_000_000_000


class RecordingTable:
    """A process table stand-in (the API of sentinel.enrich.proctable) that records calls."""

    def __init__(self) -> None:
        self.procs: dict[int, Process] = {}
        self.calls: list[tuple] = []

    def on_exec(self, event, parent_start_ns=0, cgroups_key=0):
        self.calls.append(("exec", event.proc.pid, parent_start_ns, cgroups_key))
        self.procs[event.proc.pid] = event.proc
        return event.proc

    def on_fork(self, parent_pid, parent_start_ns, child_pid, child_start_ns, is_thread, boot_ns=0, vpid=0):
        self.calls.append(("fork", parent_pid, child_pid, is_thread))
        if is_thread:
            return None
        child = self.lookup(parent_pid, parent_start_ns).copy_for_fork(child_pid, child_start_ns)
        child.vpid = vpid
        self.procs[child_pid] = child
        return child

    def on_exit(self, pid, start_ns, code, signal):
        self.calls.append(("exit", pid, code, signal))
        return self.procs.get(pid)

    def on_chdir(self, pid, start_ns, cwd):
        self.calls.append(("chdir", pid, cwd))
        proc = self.lookup(pid, start_ns)
        proc.cwd = cwd
        return proc

    def lookup(self, pid, start_ns=0):
        proc = self.procs.get(pid)
        if proc is not None and proc.start_ns == start_ns:
            return proc
        return Process(pid, start_ns)  # unstored, like the real table's placeholder


def record(layout: abi.Layout, op: int, tail: bytes = b"", **values) -> bytes:
    fields = dict.fromkeys(layout.names, 0)
    for name, fmt in layout.fields:
        if fmt.endswith("s"):
            fields[name] = b""
    fields.update({"hdr.op": op, "hdr.abi": abi.ABI_VERSION, "hdr.comm": b"comm"})
    fields.update({k.replace("__", "."): v for k, v in values.items()})
    fields["hdr.size"] = layout.size + len(tail)
    return layout.struct.pack(*(fields[name] for name in layout.names)) + tail


def components(path: str) -> bytes:
    """A path as the kernel sends it: components leaf first, each NUL-terminated."""
    parts = [p for p in path.split("/") if p]
    return b"".join(p.encode() + b"\0" for p in reversed(parts))


def make_decoder():
    table = RecordingTable()
    return Decoder(table, lambda boot_ns: boot_ns + OFFSET_NS), table


def exec_record(**overrides) -> bytes:
    filename = b"/tmp/script.sh\0"
    interp = b"/bin/sh\0"
    exepath = components("/usr/bin/dash")
    cwd = components("/home/user")
    args = b"/bin/sh\0/tmp/script.sh\0--flag\0"
    env = b"LD_PRELOAD=/x.so\0PATH=/bin\0"
    values = dict(
        hdr__boot_ns=5_000,
        hdr__start_ns=4_000,
        hdr__pid=100,
        hdr__tid=100,
        hdr__comm=b"script.sh",
        hdr__cgroup_id=77,
        ppid=50,
        parent_start_ns=3_000,
        old_pid=101,
        uid=1000,
        gid=1000,
        euid=1000,
        egid=1000,
        loginuid=1000,
        vpid=100,
        pgid=100,
        vpgid=100,
        sid=40,
        tty=(136 << 20) | 3,
        cap_effective=0,
        exe_ino=1234,
        exe_dev=(254 << 20) | 1,
        exe_mode=stat.S_IFREG | 0o755,
        exe_uid=0,
        exe_gid=0,
        exe_mtime_ns=11,
        exe_ctime_ns=12,
        flags=abi.F_EXECVEAT | abi.F_EXE_MEMFD | abi.F_ARGS_TRUNC,
        filename_len=len(filename),
        interp_len=len(interp),
        exepath_len=len(exepath),
        cwd_len=len(cwd),
        args_len=len(args),
        env_len=len(env),
        cgroups_key=0xFFFF888100AB0000,
    )
    values.update(overrides)
    return record(abi.EXEC, abi.OP_EXEC, filename + interp + exepath + cwd + args + env, **values)


def test_exec_record_becomes_a_process_with_every_field():
    decoder, table = make_decoder()
    event = decoder.decode(exec_record())
    proc = event.proc
    assert event.type == "execveat" and event.res == 0
    assert event.tid == 101 and proc.tid == 101 and proc.pid == 100
    assert event.time_ns == 5_000 + OFFSET_NS and event.boot_ns == 5_000
    assert proc.exec_id == (100, 4_000)
    assert proc.filename == "/tmp/script.sh"
    assert proc.interpreter == "/bin/sh"
    assert proc.exepath == "/usr/bin/dash"
    assert proc.cwd == "/home/user"
    assert proc.exe == "/bin/sh" and proc.args == ("/tmp/script.sh", "--flag")
    assert proc.args_truncated is True
    assert proc.env == ("LD_PRELOAD=/x.so", "PATH=/bin")
    assert proc.comm == "script.sh"
    assert (proc.ppid, proc.sid, proc.tty, proc.cgroup_id) == (50, 40, (136 << 20) | 3, 77)
    assert (proc.exe_ino, proc.exe_mtime_ns, proc.exe_ctime_ns) == (1234, 11, 12)
    assert proc.exe_from_memfd is True and proc.exe_upper_layer is False
    assert proc.exe_writable is False
    assert proc.is_vpgid_leader is True
    assert proc.exec_syscall == "execveat"
    assert table.calls == [("exec", 100, 3_000, 0xFFFF888100AB0000)]
    assert event.num == 1 and decoder.decoded == 1


def test_plain_binary_has_no_interpreter_and_root_cwd():
    filename = b"/usr/bin/true\0"
    tail = filename + filename + components("/usr/bin/true")
    decoder, _ = make_decoder()
    event = decoder.decode(
        record(
            abi.EXEC,
            abi.OP_EXEC,
            tail,
            filename_len=len(filename),
            interp_len=len(filename),
            exepath_len=len(components("/usr/bin/true")),
            cwd_len=0,
        )
    )
    assert event.type == "execve"
    assert event.proc.interpreter == ""
    assert event.proc.cwd == "/"
    assert event.proc.exe == "/usr/bin/true" and event.proc.args == ()


def test_undecodable_bytes_in_strings_survive():
    filename = b"/tmp/\xff\xfe\0"
    decoder, _ = make_decoder()
    event = decoder.decode(record(abi.EXEC, abi.OP_EXEC, filename, filename_len=len(filename)))
    assert event.proc.filename == "/tmp/\udcff\udcfe"


def test_failed_exec_is_reported_on_the_calling_process():
    decoder, table = make_decoder()
    decoder.decode(exec_record())
    tail = b"/nope\0" + b"/nope\0arg\0"
    event = decoder.decode(
        record(
            abi.EXEC_FAILED,
            abi.OP_EXEC_FAILED,
            tail,
            hdr__pid=100,
            hdr__tid=100,
            hdr__start_ns=4_000,
            res=-2,
            filename_len=6,
            args_len=10,
        )
    )
    assert event.type == "execve" and event.res == -2
    assert event.args == {"filename": "/nope", "argv": ("/nope", "arg")}
    assert event.proc is table.procs[100]


def test_clone_of_a_process_and_of_a_thread():
    decoder, table = make_decoder()
    decoder.decode(exec_record())
    child = decoder.decode(
        record(
            abi.CLONE,
            abi.OP_CLONE,
            hdr__pid=200,
            hdr__tid=200,
            hdr__start_ns=9_000,
            parent_pid=100,
            parent_tid=100,
            parent_start_ns=4_000,
            syscall=abi.SYSCALL_FORK,
            flags=abi.F_CLONE_FLAGS,
            clone_flags=17,
        )
    )
    assert child.type == "fork" and child.res == 200 and child.proc is table.procs[100]
    assert child.args["flags"] == 17 and child.args["is_thread"] is False
    forked = table.procs[200]
    assert forked.parent is table.procs[100] and forked.exepath == "/usr/bin/dash"
    thread = decoder.decode(
        record(
            abi.CLONE,
            abi.OP_CLONE,
            hdr__pid=100,
            hdr__tid=201,
            hdr__start_ns=4_000,
            parent_pid=100,
            parent_tid=100,
            parent_start_ns=4_000,
            flags=abi.F_CLONE_THREAD,
        )
    )
    assert thread.type == "clone" and thread.args["is_thread"] is True and "flags" not in thread.args
    assert table.calls[-1] == ("fork", 100, 100, True)
    assert thread.proc is table.procs[100] and thread.proc.tid == 100


def test_exit_status_is_split_into_code_and_signal():
    decoder, table = make_decoder()
    decoder.decode(exec_record())
    exited = decoder.decode(
        record(abi.EXIT, abi.OP_EXIT, hdr__pid=100, hdr__tid=100, hdr__start_ns=4_000, exit_code=7 << 8)
    )
    assert exited.type == "procexit" and exited.args == {"status": 7, "sig": 0, "core": False}
    assert exited.proc.exited and exited.proc.exit_code == 7
    killed = decoder.decode(record(abi.EXIT, abi.OP_EXIT, hdr__pid=300, exit_code=15))
    assert killed.args == {"status": 0, "sig": 15, "core": False}
    assert killed.proc.pid == 300 and killed.proc.comm == "comm"  # unknown to the table
    assert table.calls[-1] == ("exit", 300, 0, 15)


def test_chdir_updates_the_table():
    decoder, table = make_decoder()
    decoder.decode(exec_record())
    cwd = components("/var/tmp")
    event = decoder.decode(
        record(
            abi.CHDIR,
            abi.OP_CHDIR,
            cwd,
            hdr__pid=100,
            hdr__start_ns=4_000,
            flags=abi.F_FCHDIR,
            cwd_len=len(cwd),
        )
    )
    assert event.type == "fchdir" and event.args == {"path": "/var/tmp"}
    assert table.procs[100].cwd == "/var/tmp"
    failed = decoder.decode(record(abi.CHDIR, abi.OP_CHDIR, hdr__pid=100, hdr__start_ns=4_000, res=-2))
    assert failed.type == "chdir" and failed.res == -2 and failed.args == {}


def test_malformed_records_are_dropped_and_counted():
    decoder, _ = make_decoder()
    good = exec_record()
    assert decoder.decode(good[:20]) is None  # cut inside the body
    assert decoder.decode(b"\x63\x00" + good[2:]) is None  # unknown opcode
    assert decoder.decode(good[:4] + b"\xff\xff\x00\x00" + good[8:]) is None  # size beyond the data
    wrong_abi = bytearray(good)
    wrong_abi[2] = 99
    assert decoder.decode(bytes(wrong_abi)) is None
    assert decoder.dropped == 4 and decoder.decoded == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(sorted(abi.RECORDS)))
def test_garbage_never_raises(blob, op):
    decoder, _ = make_decoder()
    data = abi.PREFIX.pack(op, abi.ABI_VERSION, len(blob) + 8) + blob
    decoder.decode(data)
    assert decoder.decoded + decoder.dropped == 1


def test_exe_writable_follows_dac_and_cap_dac_override():
    mode = stat.S_IFREG | 0o755
    assert exe_writable(mode, 1000, 1000, 1000, 1000, 0)
    assert not exe_writable(mode, 0, 0, 1000, 1000, 0)
    assert exe_writable(mode, 0, 0, 1000, 1000, 1 << 1)
    assert exe_writable(stat.S_IFREG | 0o775, 0, 1000, 1000, 1000, 0)
    assert exe_writable(stat.S_IFREG | 0o757, 0, 0, 1000, 1000, 0)


def _fields(proc: Process) -> dict:
    return {name: getattr(proc, name) for name in Process.__slots__ if name != "parent"}


def _changed(name: str, fmt: str, value):
    if fmt.endswith("s"):
        return b"other"
    return value ^ 1 if name != "hdr.op" else value


def test_exec_fields_decoded_after_a_similar_exec_are_those_of_a_fresh_decode():
    """Execs share decoded fields (templates, argv): a record that differs from an earlier
    one in any single field must still decode exactly as a fresh decoder decodes it."""
    warm, _ = make_decoder()
    base = exec_record()
    warm.decode(base)
    defaults = dict(zip(abi.EXEC.names, abi.EXEC.struct.unpack_from(base)))
    lengths = {"filename_len", "interp_len", "exepath_len", "cwd_len", "args_len", "env_len"}
    skipped = {"hdr.op", "hdr.abi", "hdr.size"} | lengths
    for name, fmt in abi.EXEC.fields:
        if name in skipped or name.endswith("_pad"):
            continue
        values = {key.replace(".", "__"): value for key, value in defaults.items() if key not in skipped}
        values[name.replace(".", "__")] = _changed(name, fmt, defaults[name])
        variant = exec_record(**values)
        fresh, _ = make_decoder()
        expected = fresh.decode(variant)
        got = warm.decode(variant)
        assert _fields(got.proc) == _fields(expected.proc), name
        assert (got.type, got.args, got.tid, got.boot_ns, got.time_ns) == (
            expected.type, expected.args, expected.tid, expected.boot_ns, expected.time_ns
        ), name  # fmt: skip


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"/bin/true\0", b"/usr/bin/env\0"]),
            st.sampled_from([b"", b"/bin/true\0", b"\0", b"/bin/true\0x\0", b"a\0b\0c"]),
            st.sampled_from([b"", b"PATH=/bin\0", b"PATH=/usr/bin\0LD_PRELOAD=/x.so\0"]),
            st.sampled_from(["/", "/root", "/home/a b"]),
        ),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=60, deadline=None)
def test_a_sequence_of_execs_decodes_as_each_would_alone(execs):
    warm, _ = make_decoder()
    warm.max_shared = 2  # the shared caches start over often
    for filename, args, env, cwd in execs:
        tail = filename + components(cwd) + args + env
        data = record(
            abi.EXEC, abi.OP_EXEC, tail, hdr__pid=7, hdr__start_ns=9, filename_len=len(filename),
            cwd_len=len(components(cwd)), args_len=len(args), env_len=len(env),
        )  # fmt: skip
        fresh, _ = make_decoder()
        assert _fields(warm.decode(data).proc) == _fields(fresh.decode(data).proc)


def test_execs_of_the_same_program_share_their_strings():
    decoder, _ = make_decoder()
    first = decoder.decode(exec_record(hdr__pid=100, old_pid=100)).proc
    second = decoder.decode(exec_record(hdr__pid=200, old_pid=200, hdr__start_ns=8_000)).proc
    assert first is not second and (first.pid, second.pid) == (100, 200)
    assert second.start_ns == 8_000 and second.tid == 200
    for name in ("env", "args", "exepath", "cwd", "filename", "comm", "exe"):
        assert getattr(first, name) is getattr(second, name), name


def test_shared_exec_fields_are_bounded_by_bytes_as_well_as_count():
    decoder, _ = make_decoder()
    decoder.max_shared_bytes = 1000
    for n in range(50):
        env = b"X=" + b"%03d" % n * 100 + b"\0"  # a 300-byte environment, unique each time
        args = b"/bin/true\0" + b"%03d" % n * 100 + b"\0"
        data = record(abi.EXEC, abi.OP_EXEC, args + env, hdr__pid=7, args_len=len(args), env_len=len(env))
        event = decoder.decode(data)
        assert event.proc.env == (env[:-1].decode(),) and event.proc.args == (args[10:-1].decode(),)
    assert decoder._template_bytes <= 1000 and len(decoder._templates) <= 1000 // 300
    assert decoder._argv_bytes <= 1000 and len(decoder._argvs) <= 1000 // 300
