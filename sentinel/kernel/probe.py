"""What this kernel lets sentinel do, found by trying each thing, never by kernel version.

Distributions backport and disable features independently of version numbers (this
project's own development host runs 6.18 and refuses BPF LSM programs), so every probe
performs the real operation on a throwaway object: creates the map, loads the program,
attaches it to a cgroup it made, and undoes it at once. Nothing stays loaded or attached.

`run_probes()` is what `sentinel doctor` prints; `enforcement_mechanisms()` turns the
results into the mechanism each enforcement action gets (the strongest available), and
`missing_essentials()` says why the agent could not run at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from sentinel.errors import KernelError
from sentinel.kernel import headers
from sentinel.log import get_logger

log = get_logger("sentinel.kernel.probe")

# Every object a probe loads carries this prefix (see hygiene.NAME_PREFIX), so a test or
# an operator can see with bpftool that nothing was left behind.
PROBE_NAME_PREFIX = "snt_probe_"

# Where the agent needs each pseudo filesystem; mounted by ensure_kernel_filesystems().
KERNEL_FILESYSTEMS: tuple[tuple[str, str, str], ...] = (
    # (fstype, mount point, source)
    ("tracefs", "/sys/kernel/tracing", "nodev"),
    ("securityfs", "/sys/kernel/security", "none"),
    ("bpf", "/sys/fs/bpf", "bpf"),
)

_BPF_F_ALLOW_MULTI = 1 << 1
_FAN_CLOEXEC = 0x1
_FAN_CLASS_CONTENT = 0x4
_FAN_MARK_ADD = 0x1
_FAN_OPEN_PERM = 0x10000
_FAN_OPEN_EXEC_PERM = 0x40000
_AT_FDCWD = -100

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


@dataclass(frozen=True)
class ProbeResult:
    """One feature: did the real operation work, what was found, and why not if it failed."""

    name: str
    ok: bool
    detail: str = ""
    error: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# --------------------------------------------------------------------- mounts


def mount_points(fstype: str) -> list[str]:
    """Mount points of filesystems of `fstype`, from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            before, _, after = line.partition(" - ")
            fields = before.split()
            if after.split(" ", 1)[0] == fstype and len(fields) >= 5:
                found.append(fields[4].replace("\\040", " "))
    return found


def cgroup2_mount() -> str | None:
    """Where the unified (v2) cgroup hierarchy is mounted: /sys/fs/cgroup on pure v2
    hosts, /sys/fs/cgroup/unified on hybrid ones; None when it is not mounted."""
    mounts = mount_points("cgroup2")
    return mounts[0] if mounts else None


def _mount(source: str, target: str, fstype: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, "mount -t %s %s: %s" % (fstype, target, os.strerror(code)))


def _ensure_mounted(fstype: str, target: str, source: str) -> bool:
    """Mount `fstype` at `target` unless it already is; True when this call mounted it."""
    if target in mount_points(fstype):
        return False
    _mount(source, target, fstype)
    log.info("kernel.mounted", fstype=fstype, path=target)
    return True


def ensure_kernel_filesystems() -> list[str]:
    """Mount tracefs, securityfs and bpffs where the agent needs them; returns what it mounted."""
    return [target for fstype, target, source in KERNEL_FILESYSTEMS if _ensure_mounted(fstype, target, source)]


# --------------------------------------------------------------------- probes


def _errno_text(code: int) -> str:
    return "%s (%s)" % (errno.errorcode.get(code, str(code)), os.strerror(code))


def probe_btf() -> ProbeResult:
    try:
        with open(headers.BTF_PATH, "rb") as f:
            magic = f.read(2)
    except OSError as exc:
        return ProbeResult("btf", False, headers.BTF_PATH, _errno_text(exc.errno or 0))
    if magic not in (b"\x9f\xeb", b"\xeb\x9f"):
        return ProbeResult("btf", False, headers.BTF_PATH, "not a BTF blob")
    return ProbeResult("btf", True, "%s (%d KiB)" % (headers.BTF_PATH, os.path.getsize(headers.BTF_PATH) // 1024))


def probe_kernel_headers() -> ProbeResult:
    found = headers.headers_dir()
    if found is None:
        return ProbeResult("kernel_headers", False, error="no /lib/modules/%s/build/include" % os.uname().release)
    return ProbeResult("kernel_headers", True, found)


def probe_header_tree(configured_cache_dir: str | None = None) -> ProbeResult:
    """bcc can compile here: with real headers, or with the BTF tree (built now if needed)."""
    try:
        source = headers.kernel_source(configured_cache_dir)
    except (KernelError, OSError, RuntimeError) as exc:
        return ProbeResult("header_tree", False, error=str(exc).splitlines()[0])
    if source.kind == "headers":
        return ProbeResult("header_tree", True, "real kernel headers at %s" % source.path)
    if source.cache_hit:
        try:
            with open(os.path.join(source.path, headers.BUILD_REPORT)) as f:
                how = "cache hit; the cold build took %.1f s" % json.load(f)["build_seconds"]
        except (OSError, ValueError, KeyError):
            how = "cache hit"
    else:
        how = "built now in %.1f s" % (source.build_seconds or 0)
    return ProbeResult("header_tree", True, "BTF tree %s (%s)" % (source.path, how))


def probe_ringbuf() -> ProbeResult:
    from bcc.libbcc import lib
    from bcc.table import BPF_MAP_TYPE_RINGBUF

    size = max(4096, os.sysconf("SC_PAGE_SIZE"))
    fd = lib.bcc_create_map(BPF_MAP_TYPE_RINGBUF, (PROBE_NAME_PREFIX + "rb").encode(), 0, 0, size, 0)
    if fd < 0:
        return ProbeResult("ringbuf", False, error="map create: " + _errno_text(ctypes.get_errno()))
    os.close(fd)
    return ProbeResult("ringbuf", True, "BPF_MAP_TYPE_RINGBUF of %d bytes created" % size)


def probe_fanotify(name: str, mask: int, mask_name: str) -> ProbeResult:
    """Permission events need FAN_CLASS_CONTENT; the mask is tried on a scratch file's inode
    (no event is ever generated: nothing opens it while the group exists)."""
    fd = _libc.fanotify_init(_FAN_CLASS_CONTENT | _FAN_CLOEXEC, os.O_RDONLY | os.O_LARGEFILE)
    if fd < 0:
        return ProbeResult(name, False, error="fanotify_init(FAN_CLASS_CONTENT): " + _errno_text(ctypes.get_errno()))
    try:
        with tempfile.NamedTemporaryFile(prefix="sentinel-probe-") as scratch:
            if _libc.fanotify_mark(fd, _FAN_MARK_ADD, mask, _AT_FDCWD, scratch.name.encode()) != 0:
                return ProbeResult(
                    name, False, error="fanotify_mark(%s): %s" % (mask_name, _errno_text(ctypes.get_errno()))
                )
    finally:
        os.close(fd)
    return ProbeResult(name, True, "%s on an inode mark accepted" % mask_name)


def probe_kernel_filesystems() -> list[ProbeResult]:
    results = []
    for fstype, target, source in KERNEL_FILESYSTEMS:
        name = "bpffs" if fstype == "bpf" else fstype
        try:
            mounted_now = _ensure_mounted(fstype, target, source)
        except OSError as exc:
            results.append(ProbeResult(name, False, target, str(exc)))
            continue
        results.append(
            ProbeResult(name, True, ("was missing; mounted at %s" if mounted_now else "mounted at %s") % target)
        )
    return results


# One compile for every non-LSM program probe; none of them is ever triggered.
_PROBE_PROGRAMS = r"""
int snt_probe_tp(struct tracepoint__sched__sched_process_exec *args) { return 0; }
int snt_probe_rawtp(struct bpf_raw_tracepoint_args *ctx) { return 0; }
int snt_probe_signal(void *ctx) {
    bpf_send_signal(0);   /* loaded to ask the verifier, never attached */
    return 0;
}
int snt_probe_connect4(struct bpf_sock_addr *ctx) { return 1; }
"""

_LSM_PROBE = "LSM_PROBE(bprm_check_security, struct linux_binprm *bprm, int ret) { return ret; }\n"


def _failure(name: str, exc: BaseException) -> ProbeResult:
    code = ctypes.get_errno()
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if code:
        reason = "%s: %s" % (reason, _errno_text(code))
    return ProbeResult(name, False, error=reason)


def _bpf_program_probes(configured_cache_dir: str | None) -> list[ProbeResult]:
    from bcc import BPF, BPFAttachType

    names = ("tracepoint", "raw_tracepoint", "send_signal", "cgroup_sock_addr")
    try:
        bpf = headers.load_bpf(_PROBE_PROGRAMS, configured_cache_dir=configured_cache_dir)
    except Exception as exc:  # bcc raises bare Exception for compile and load errors
        failed = _failure("compile", exc)
        return [ProbeResult(name, False, error="probe programs did not compile: " + failed.error) for name in names]
    results = []
    try:
        results.append(_attempt("tracepoint", lambda: _attach_tracepoint(bpf)))
        results.append(_attempt("raw_tracepoint", lambda: _attach_raw_tracepoint(bpf)))
        results.append(_attempt("send_signal", lambda: _load_send_signal(bpf, BPF)))
        results.append(_attempt("cgroup_sock_addr", lambda: _attach_sock_addr(bpf, BPF, BPFAttachType)))
    finally:
        bpf.cleanup()
    return results


def _attempt(name: str, action: Callable[[], str]) -> ProbeResult:
    ctypes.set_errno(0)
    try:
        return ProbeResult(name, True, action())
    except Exception as exc:  # bcc raises bare Exception; errno says why
        return _failure(name, exc)


def _attach_tracepoint(bpf) -> str:
    bpf.attach_tracepoint(tp=b"sched:sched_process_exec", fn_name=b"snt_probe_tp")
    bpf.detach_tracepoint(tp=b"sched:sched_process_exec")
    return "sched:sched_process_exec attached and detached"


def _attach_raw_tracepoint(bpf) -> str:
    bpf.attach_raw_tracepoint(tp=b"sched_process_exec", fn_name=b"snt_probe_rawtp")
    bpf.detach_raw_tracepoint(tp=b"sched_process_exec")
    return "raw sched_process_exec attached and detached"


def _load_send_signal(bpf, BPF) -> str:
    bpf.load_func(b"snt_probe_signal", BPF.TRACEPOINT)
    return "a program calling bpf_send_signal passed the verifier (not attached)"


@contextlib.contextmanager
def scratch_cgroup(tag: str) -> Iterator[str]:
    """A new, empty cgroup v2 directory for a probe or test; removed on exit."""
    root = cgroup2_mount()
    if root is None:
        raise KernelError("cgroup v2 is not mounted (no cgroup2 line in /proc/self/mountinfo)")
    path = os.path.join(root, "sentinel-%s-%d-%d" % (tag, os.getpid(), time.monotonic_ns()))
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)


def _attach_sock_addr(bpf, BPF, BPFAttachType) -> str:
    connect4 = BPFAttachType.CGROUP_INET4_CONNECT
    fn = bpf.load_func(b"snt_probe_connect4", BPF.CGROUP_SOCK_ADDR, attach_type=connect4)
    with scratch_cgroup("probe") as path:
        cgroup_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            BPF.attach_func(fn, cgroup_fd, connect4, _BPF_F_ALLOW_MULTI)
            BPF.detach_func(fn, cgroup_fd, connect4)
        finally:
            os.close(cgroup_fd)
    return "cgroup/connect4 attached (BPF_F_ALLOW_MULTI) to a scratch cgroup and detached"


def probe_cgroup2() -> ProbeResult:
    root = cgroup2_mount()
    if root is None:
        return ProbeResult("cgroup2", False, error="no cgroup2 mount in /proc/self/mountinfo")
    return ProbeResult("cgroup2", True, "mounted at %s" % root)


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[list[str]]:
    """libbpf writes its complaints straight to fd 2; keep them out of the doctor's table
    and hand them to the probe instead."""
    captured: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.extend(line for line in sink.read().decode(errors="replace").splitlines() if line.strip())


def probe_bpf_lsm(configured_cache_dir: str | None = None) -> ProbeResult:
    """bcc loads and attaches LSM_PROBE programs while compiling; cleanup() detaches."""
    ctypes.set_errno(0)
    with _native_stderr_captured() as libbpf_said:
        try:
            bpf = headers.load_bpf(_LSM_PROBE, configured_cache_dir=configured_cache_dir)
        except Exception as exc:
            failure = _failure("bpf_lsm", exc)
        else:
            failure = None
            bpf.cleanup()
    if failure is not None:
        said = [line for line in libbpf_said if "load program" in line]
        if "super-user" in failure.error:  # bcc's wording for any EPERM from the loader
            failure = ProbeResult("bpf_lsm", False, error="program load refused: " + _errno_text(errno.EPERM))
        return ProbeResult("bpf_lsm", False, said[0] if said else "", failure.error)
    return ProbeResult("bpf_lsm", True, "lsm/bprm_check_security loaded, attached and detached")


def run_probes(configured_cache_dir: str | None = None) -> list[ProbeResult]:
    """Every probe, in an order where later ones can rely on the mounts made earlier."""
    results = [probe_btf(), probe_kernel_headers()]
    results += probe_kernel_filesystems()
    results.append(probe_cgroup2())
    tree = probe_header_tree(configured_cache_dir)
    results.append(tree)
    results.append(probe_ringbuf())
    if tree.ok:
        results += _bpf_program_probes(configured_cache_dir)
        results.append(probe_bpf_lsm(configured_cache_dir))
    else:
        for name in ("tracepoint", "raw_tracepoint", "send_signal", "cgroup_sock_addr", "bpf_lsm"):
            results.append(ProbeResult(name, False, error="bcc cannot compile here (see header_tree)"))
    results.append(probe_fanotify("fanotify_open_perm", _FAN_OPEN_PERM, "FAN_OPEN_PERM"))
    results.append(probe_fanotify("fanotify_open_exec_perm", _FAN_OPEN_EXEC_PERM, "FAN_OPEN_EXEC_PERM"))
    for result in results:
        log.debug("kernel.probe", feature=result.name, ok=result.ok, detail=result.detail, error=result.error)
    return results


# ------------------------------------------------------------ what follows from them

# Mechanism names, strongest first per action, and what each can match.
# What a deny rule can name is the same for every mechanism (sentinel.actions.enforce_plan:
# files, directories, program names, addresses/CIDRs/ports); the scope says which part
# each fallback takes and how.
MECHANISM_SCOPE = {
    "lsm": "EPERM, before the operation",
    "fanotify": "specific files, EPERM",
    "kill-at-exec": "names and directories (files without fanotify), SIGKILL before the first instruction",
    "kill-at-open": "SIGKILL after the open: O_CREAT/O_TRUNC may have happened",
    "cgroup-sock-addr": "connect and UDP sendmsg, IPv4/IPv6, EPERM",
    "bpf-send-signal": "any kill rule, at the next syscall; pidfd for sleepers",
}


def enforcement_mechanisms(results: list[ProbeResult]) -> dict[str, tuple[str, ...]]:
    """For each enforcement action, the mechanisms to use here, combined left to right.

    The one place the fallback table of the design lives: LSM when loadable, else
    fanotify for specific files plus a kill at the syscall for the rest.
    """
    ok = {r.name for r in results if r.ok}
    tracing = bool({"tracepoint", "raw_tracepoint"} & ok)
    can_kill = tracing and "send_signal" in ok
    lsm = "bpf_lsm" in ok

    def pick(lsm_choice: tuple[str, ...], fallback: tuple[str, ...]) -> tuple[str, ...]:
        return lsm_choice if lsm else fallback

    exec_fallback = tuple(
        m for m, have in (("fanotify", "fanotify_open_exec_perm" in ok), ("kill-at-exec", can_kill)) if have
    )
    open_fallback = tuple(
        m for m, have in (("fanotify", "fanotify_open_perm" in ok), ("kill-at-open", can_kill)) if have
    )
    return {
        "deny_exec": pick(("lsm",), exec_fallback),
        "deny_open": pick(("lsm",), open_fallback),
        "deny_connect": pick(("lsm",), ("cgroup-sock-addr",) if "cgroup_sock_addr" in ok else ()),
        "kill": ("bpf-send-signal",) if can_kill else (),
    }


def missing_essentials(results: list[ProbeResult]) -> list[str]:
    """Why the agent cannot run here (empty when it can): it needs a way to compile,
    a ring buffer and tracepoints."""
    ok = {r.name for r in results if r.ok}
    reasons = []
    if not ({"btf", "kernel_headers"} & ok) or "header_tree" not in ok:
        reasons.append("bcc cannot compile: neither kernel headers nor a usable BTF header tree")
    if "ringbuf" not in ok:
        reasons.append("no BPF ring buffer")
    if "tracepoint" not in ok:
        reasons.append("tracepoints cannot be attached")
    return reasons


def doctor_report(configured_cache_dir: str | None = None) -> dict[str, object]:
    """Everything `sentinel doctor` shows, as one JSON-ready object."""
    results = run_probes(configured_cache_dir)
    reasons = missing_essentials(results)
    try:
        features = headers.btf_feature_cflags(configured_cache_dir)
    except (KernelError, OSError) as exc:
        features = ["(unavailable: %s)" % exc]
    if os.geteuid() != 0:
        reasons.append("not running as root: loading BPF programs needs root")
    return {
        "can_run": not reasons,
        "cannot_run_because": reasons,
        "probes": [r.to_dict() for r in results],
        "enforcement": {action: list(chosen) for action, chosen in enforcement_mechanisms(results).items()},
        "btf_feature_cflags": features,
    }


def format_report(report: dict) -> str:
    """The doctor report as an aligned text table, then mechanisms and the verdict."""
    rows = [("FEATURE", "STATUS", "DETAIL")]
    for probe in report["probes"]:
        rows.append((probe["name"], "ok" if probe["ok"] else "NO", probe["detail"] if probe["ok"] else probe["error"]))
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = ["%-*s  %-*s  %s" % (width[0], a, width[1], b, c) for a, b, c in rows]
    lines += [
        "",
        "ENFORCEMENT",
        *(
            "%-*s  %s" % (width[0], action, " + ".join("%s (%s)" % (m, MECHANISM_SCOPE[m]) for m in chosen) or "none")
            for action, chosen in report["enforcement"].items()
        ),
    ]
    lines += ["", "BTF feature macros: %s" % (" ".join(report["btf_feature_cflags"]) or "none")]
    if report["can_run"]:
        lines.append("verdict: the agent can run here")
    else:
        lines.append("verdict: the agent CANNOT run here: %s" % "; ".join(report["cannot_run_because"]))
    return "\n".join(lines)
