"""A fake /proc tree (and root file systems) built in a temporary directory.

The enrich modules take the proc root as a parameter, so everything above the kernel can be
tested without root: processes appear, change and vanish as the test writes files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sentinel.config import SensorConfig
from sentinel.enrich.container import CgroupResolver
from sentinel.enrich.procfs import ProcFS
from sentinel.enrich.proctable import ProcessTable
from sentinel.enrich.users import UserResolver

HOST_PASSWD = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n"
HOST_GROUP = "root:x:0:\nalice:x:1000:\nstaff:x:50:alice\n"
CLK_TCK = 100
TICK_NS = 10_000_000


def make_root(path: Path, passwd: str, group: str) -> Path:
    (path / "etc").mkdir(parents=True, exist_ok=True)
    (path / "etc/passwd").write_text(passwd)
    (path / "etc/group").write_text(group)
    (path / "bin").mkdir(exist_ok=True)
    for name in ("sh", "sleep", "ls", "python3"):
        (path / "bin" / name).write_bytes(b"\x7fELF" + name.encode())
        os.chmod(path / "bin" / name, 0o755)
    return path


class FakeProc:
    """Writes /proc/<pid>/... files the way the kernel lays them out."""

    def __init__(self, base: Path) -> None:
        self.root = base / "proc"
        self.root.mkdir()
        self.host = make_root(base / "host", HOST_PASSWD, HOST_GROUP)

    def add(
        self,
        pid: int,
        *,
        ppid: int = 1,
        comm: str = "sh",
        start_ticks: int = 100,
        argv: tuple[str, ...] | None = None,
        exe: str | None = None,
        cwd: str = "/",
        uid: int = 0,
        euid: int | None = None,
        gid: int = 0,
        egid: int | None = None,
        loginuid: int = 0xFFFFFFFF,
        environ: tuple[str, ...] = (),
        cgroup: str = "0::/user.slice\n",
        tty_nr: int = 0,
        pgid: int | None = None,
        sid: int | None = None,
        nspid: tuple[int, ...] | None = None,
        nspgid: tuple[int, ...] | None = None,
        caps: tuple[int, int, int] = (0, 0, 0),
        root: Path | None = None,
        state: str = "S",
        tgid: int | None = None,
    ) -> Path:
        directory = self.root / str(pid)
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir()
        euid = uid if euid is None else euid
        egid = gid if egid is None else egid
        pgid = pid if pgid is None else pgid
        sid = pgid if sid is None else sid
        flags_to_itrealvalue = " ".join(["0"] * 13)  # fields 9-21
        stat = "%d (%s) %s %d %d %d %d -1 %s %d 0 0\n" % (
            pid, comm, state, ppid, pgid, sid, tty_nr, flags_to_itrealvalue, start_ticks
        )  # fmt: skip
        (directory / "stat").write_text(stat)
        nspid = nspid or (pid,)
        nspgid = nspgid or (pgid,)
        status = (
            "Name:\t{comm}\nTgid:\t{tgid}\nPid:\t{pid}\nPPid:\t{ppid}\n"
            "Uid:\t{uid}\t{euid}\t{euid}\t{euid}\nGid:\t{gid}\t{egid}\t{egid}\t{egid}\n"
            "NStgid:\t{nspid}\nNSpid:\t{nspid}\nNSpgid:\t{nspgid}\n"
            "CapInh:\t{inh:016x}\nCapPrm:\t{prm:016x}\nCapEff:\t{eff:016x}\n"
        ).format(
            comm=comm,
            pid=pid,
            tgid=pid if tgid is None else tgid,
            ppid=ppid,
            uid=uid,
            euid=euid,
            gid=gid,
            egid=egid,
            nspid="\t".join(map(str, nspid)),
            nspgid="\t".join(map(str, nspgid)),
            inh=caps[0],
            prm=caps[1],
            eff=caps[2],
        )
        (directory / "status").write_text(status)
        argv = (comm,) if argv is None else argv
        (directory / "cmdline").write_bytes(b"".join(arg.encode() + b"\0" for arg in argv))
        (directory / "environ").write_bytes(b"".join(entry.encode() + b"\0" for entry in environ))
        (directory / "loginuid").write_text(str(loginuid))
        (directory / "cgroup").write_text(cgroup)
        root = root or self.host
        target = exe if exe is not None else str(root / "bin" / comm)
        os.symlink(target, directory / "exe")
        os.symlink(cwd, directory / "cwd")
        os.symlink(str(root), directory / "root")
        return directory

    def remove(self, pid: int) -> None:
        shutil.rmtree(self.root / str(pid))

    def procfs(self, **kwargs) -> ProcFS:
        return ProcFS(str(self.root), clk_tck=CLK_TCK, **kwargs)

    def users(self, **kwargs) -> UserResolver:
        return UserResolver(proc_root=str(self.root), host_root=str(self.host), **kwargs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_table(fake: FakeProc, clock: FakeClock, **config) -> ProcessTable:
    sensor = SensorConfig(**config)
    return ProcessTable(
        sensor,
        procfs=fake.procfs(env_keep=sensor.env_keep),
        users=fake.users(clock=clock),
        cgroups=CgroupResolver(str(fake.root)),
        clock=clock,
    )
