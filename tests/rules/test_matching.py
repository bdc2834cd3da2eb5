"""Evaluation semantics: every operator, transformers, absent fields, Falco's rendered values."""

from __future__ import annotations

from typing import Any

import pytest

from sentinel.errors import RuleError
from sentinel.rules import ast
from sentinel.rules.ruleset import compile_condition
from sentinel.rules.testcases import build_event

OPEN_ETC = {
    "type": "openat",
    "res": 3,
    "args": {"flags": "O_WRONLY|O_CREAT|O_TRUNC", "mode": "0644", "name": "/etc/Passwd.new"},
    "proc": {"name": "python3", "exepath": "/usr/bin/python3.11", "args": ["-c", "open()"], "uid": 0,
             "cwd": "/root", "env": ["LD_PRELOAD=/tmp/x.so", "PATH=/usr/bin"], "cap_permitted": ["CAP_SYS_ADMIN", "CAP_CHOWN"]},
    "parents": [{"name": "bash", "exepath": "/usr/bin/bash", "pid": 50}, {"name": "sshd", "exepath": "/usr/sbin/sshd"},
                {"name": "systemd", "exepath": "/usr/lib/systemd/systemd"}],
    "fd": {"num": 3, "type": "file", "name": "/etc/Passwd.new"},
}
CONNECT = {
    "type": "connect",
    "res": -115,
    "proc": {"name": "curl"},
    "fd": {"num": 4, "type": "ipv4", "name": "10.1.2.3:5555->93.184.216.34:443", "l4proto": "tcp",
           "lip": "10.1.2.3", "lport": 5555, "rip": "93.184.216.34", "rport": 443},
}


def holds(condition: str | ast.Expr, event: dict[str, Any] = OPEN_ETC) -> bool:
    return compile_condition(condition)(build_event(event))


@pytest.mark.parametrize("condition, expected", [
    ("fd.name = /etc/Passwd.new", True),
    ("fd.name == /etc/Passwd.new", True),
    ("fd.name = /etc/passwd.new", False),
    ("fd.name != /etc/passwd", True),
    ("fd.num < 4", True), ("fd.num <= 3", True), ("fd.num > 3", False), ("fd.num >= 3", True),
    ("fd.name contains Passwd", True), ("fd.name contains passwd", False),
    ("fd.name icontains PASSWD", True),
    ("fd.name startswith /etc/", True), ("fd.name startswith /usr/", False),
    ("fd.name endswith .new", True),
    ("fd.name glob /etc/*.new", True), ("fd.name glob /e?c/[PQ]*", True), ("fd.name glob /etc/*.old", False),
    ("fd.name iglob /ETC/passwd*", True),
    ("fd.name regex '.*P[a-z]+d.*'", True), ("fd.name regex 'P[a-z]+d'", False), ("fd.name regex '/etc/.*'", True),
    ("fd.name in (/etc/shadow, /etc/Passwd.new)", True), ("fd.name in (/etc/shadow)", False),
    ("fd.name intersects (/etc/Passwd.new)", True),
    ("fd.name pmatch (/etc, /usr)", True), ("fd.name pmatch (/et)", False), ("fd.name pmatch (/etc/Passwd.new)", True),
    ("fd.name exists", True), ("fd.sip exists", False),
    ("proc.name = val(proc.name)", True), ("proc.name = val(proc.pname)", False),
    ("proc.name != val(proc.pname)", True),
    ("evt.buffer bcontains 00ff", False),
])
def test_operators(condition, expected):
    assert holds(condition) is expected


def test_open_flags_fields_are_false_outside_opens():
    execve = {"type": "execve", "proc": {"name": "sh"}}
    assert holds("evt.is_open_read = false and evt.is_open_write = false and evt.is_open_exec = false", execve)
    created = dict(OPEN_ETC, args={"flags": "O_WRONLY|O_CREAT", "mode": "0755"}, fd={"num": 3, "name": "/x", "created": True})
    assert holds("evt.is_open_exec = true and evt.is_open_create = true", created)
    assert holds("evt.is_open_exec = true", {"type": "creat", "args": {"mode": "0700"}, "proc": {"name": "x"}})


def test_buffer_operators():
    event = {"type": "write", "args": {"data": b"\xca\xfe\xba\xbe\x00\x01"}, "proc": {"name": "java"}}
    assert holds("evt.buffer bcontains cafebabe", event)
    assert holds("evt.buffer bstartswith CAFE", event)
    assert not holds("evt.buffer bstartswith babe", event)


@pytest.mark.parametrize("condition, expected", [
    ("tolower(fd.name) = /etc/passwd.new", True),
    ("toupper(proc.name) = PYTHON3", True),
    ("basename(fd.name) = Passwd.new", True),
    ("len(proc.name) = 7", True),
    ("len(basename(fd.name)) > 5", True),
    ("b64(proc.name) exists", False),  # not base64: no value
    ("tolower(proc.name) in (PYTHON3, python3)", True),
])
def test_transformers(condition, expected):
    assert holds(condition) is expected


def test_b64_decodes():
    event = {"type": "execve", "proc": {"name": "sh", "args": ["Y3VybCBldmls"]}}
    assert holds("b64(proc.args) = 'curl evil'", event)


@pytest.mark.parametrize("condition", [
    "k8s.ns.name = default", "k8s.ns.name != default", "container.image.repository contains x",
    "container.image.repository in (a, b)", "container.image.repository exists", "fd.sip.name = x",
    "fd.rport = 443", "proc.aname[9] = x", "evt.arg.nonexistent = x",
])
def test_absent_values_make_every_check_false(condition):
    assert holds(condition) is False
    assert holds("not " + condition) is True


def test_rendered_values_compare_as_falco_renders_them():
    assert holds("evt.arg.flags = O_TRUNC|O_CREAT|O_WRONLY")
    assert holds("evt.arg.flags contains O_CREAT and evt.arg[flags] contains O_WRONLY")
    assert holds("evt.arg.mode = 0644")
    assert holds("evt.res = SUCCESS and evt.rawres = 3 and not evt.failed = true")
    assert holds("evt.is_open_write = true and evt.is_open_read = false and evt.is_open_exec = false")
    assert holds("evt.type = openat and evt.dir = <")
    assert holds("fd.typechar = f and fd.type = file and fd.directory = /etc and fd.filename = Passwd.new")
    assert holds("thread.cap_permitted = 'CAP_CHOWN CAP_SYS_ADMIN' and thread.cap_permitted contains CAP_SYS_ADMIN")
    assert holds("user.uid = 0 and user.name = root and user.loginuid = -1 and not user.loginname exists")
    assert holds("proc.env contains 'LD_PRELOAD=' and proc.env[LD_PRELOAD] = /tmp/x.so")
    assert holds("proc.cmdline = 'python3 -c open()' and proc.args = '-c open()' and proc.cwd = /root")
    assert holds("evt.arg[0] = O_TRUNC|O_CREAT|O_WRONLY")
    assert holds("evt.args contains 'name=/etc/Passwd.new'")


def test_errors_and_other_enums_render_by_name():
    assert holds("evt.res = EINPROGRESS and evt.rawres = -115 and evt.failed = true", CONNECT)
    assert holds("evt.arg.request = PTRACE_ATTACH", {"type": "ptrace", "args": {"request": 16}, "proc": {"name": "gdb"}})
    assert holds("evt.arg.cmd = BPF_PROG_LOAD", {"type": "bpf", "args": {"cmd": 5}, "proc": {"name": "x"}})
    assert holds("evt.arg.domain = AF_INET6", {"type": "socket", "args": {"domain": 10}, "proc": {"name": "x"}})
    assert holds("evt.arg.mode contains S_ISUID", {"type": "chmod", "args": {"mode": 0o4755}, "proc": {"name": "x"}})
    assert holds("evt.arg.uid = root", {"type": "setuid", "args": {"uid": 0}, "proc": {"name": "x"}})
    assert holds("evt.arg.flags = CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWUSER", {"type": "unshare", "args": {"flags": 0x30020000}, "proc": {"name": "x"}})
    assert holds("evt.arg.nstype contains CLONE_NEWNET", {"type": "setns", "args": {"nstype": 0x40000000}, "proc": {"name": "x"}})
    assert holds("evt.arg.prot = PROT_READ|PROT_EXEC", {"type": "mprotect", "args": {"prot": 5}, "proc": {"name": "x"}})
    assert holds("evt.arg.type = SOCK_STREAM|SOCK_CLOEXEC", {"type": "socket", "args": {"type": 0o2000001}, "proc": {"name": "x"}})
    assert holds("evt.arg.flags = MFD_CLOEXEC", {"type": "memfd_create", "args": {"flags": 1}, "proc": {"name": "x"}})
    execve = {"type": "execve", "proc": {"name": "x", "exe_writable": True, "exe_upper_layer": True}}
    assert holds("evt.arg.flags = EXE_WRITABLE|EXE_UPPER_LAYER", execve)


def test_container_fields_from_cgroups():
    docker = {"type": "execve", "proc": {"name": "sh", "container_id": "3ad7b26ded6d",
                                         "cgroup": "/system.slice/docker-3ad7b26ded6d0000.scope"}}
    assert holds("container.id = 3ad7b26ded6d and container.type = docker and not container.name exists", docker)
    assert holds("container.id = host and container.type = host and container.name = host")
    assert holds("container.info = 'container_id=host container_name=host'")


def test_ancestors():
    assert holds("proc.pname = bash and proc.aname[1] = bash and proc.aname[2] = sshd and proc.aname[3] = systemd")
    assert holds("proc.aname[0] = python3")
    assert holds("proc.aname = sshd and proc.aname in (nginx, systemd)")
    assert not holds("proc.aname = nginx")
    assert holds("proc.aexepath[2] = /usr/sbin/sshd and proc.aexepath endswith /systemd")
    assert holds("proc.apid[1] = 50 and proc.ppid = 50")
    assert holds("proc.pexepath = /usr/bin/bash and proc.pcmdline = bash")
    assert not holds("proc.aname[4] exists")


def test_networks():
    assert holds("fd.net = 10.0.0.0/8 and fd.net = 93.184.216.0/24", CONNECT)
    assert holds("fd.snet = 93.184.216.0/24 and not fd.snet = 10.0.0.0/8 and fd.cnet = 10.0.0.0/8", CONNECT)
    assert holds("fd.rnet in (192.168.0.0/16, 93.184.0.0/16) and fd.lnet != 93.184.0.0/16", CONNECT)
    assert holds("fd.ip = 93.184.216.34 and fd.ip != 0.0.0.0 and fd.port = 443 and fd.sport = 443", CONNECT)
    assert holds("fd.sip = 93.184.216.34 and fd.cip = 10.1.2.3 and fd.rport = 443 and fd.lport = 5555", CONNECT)
    assert holds("fd.typechar = 4 and fd.sockfamily = ip and fd.l4proto = tcp", CONNECT)
    assert not holds("fd.net = 127.0.0.0/8", CONNECT)
    v6 = dict(CONNECT, fd={"num": 4, "type": "ipv6", "lip": "::1", "lport": 1, "rip": "2001:db8::1", "rport": 80})
    assert holds("fd.rip = 2001:0db8:0:0::1 and fd.rnet = 2001:db8::/32 and not fd.rnet = 10.0.0.0/8", v6)


def test_multi_valued_fields_hold_for_any_value():
    assert holds("fd.ip startswith 93.", CONNECT)
    assert holds("fd.port > 5000", CONNECT)
    assert holds("fd.types in (file, ipv4) and fd.types intersects (file) and fd.types[3] = file")
    assert not holds("fd.types in (ipv4)")


def test_macro_free_ast_condition_compiles():
    tree = ast.all_of(ast.check("evt.type", "=", "openat"), ast.check(ast.field("fd.name", None, "tolower"), "startswith", "/etc/p"))
    assert holds(tree)
    assert not holds(ast.Not(tree))


@pytest.mark.parametrize("condition, fragment", [
    ("proc.nam = x", "unknown field 'proc.nam'"),
    ("fd.num = abc", "not a number"),
    ("evt.failed = maybe", "not a boolean"),
    ("fd.net = 10.0.0.300/8", "not an IP network"),
    ("fd.name > 3", "numeric"),
    ("user.uid contains 0", "string"),
    ("proc.aname[x] = 1", "expected a number"),
    ("proc.name[2] = x", "takes no argument"),
    ("evt.arg exists", "requires an argument"),
    ("fd.name regex '('", "regular expression"),
    ("evt.buffer bcontains zz", "hex"),
    ("undefined_macro", "undefined macro"),
])
def test_compile_errors_name_the_problem(condition, fragment):
    with pytest.raises(RuleError) as info:
        compile_condition(condition)
    assert fragment in str(info.value)
