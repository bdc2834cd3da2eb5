"""Enforcement policy: which rules act, in which mode, on whom; every action recorded.

A rule may carry `action: kill` (kill the process that triggered it) or `action: deny`
(the operation fails in the kernel). A rule acts only when both the global mode
(config.enforce.mode, changed at runtime by `sentinel enforce mode`) and its own mode are
`enforce`; a rule with an action and no mode is in audit. In audit nothing changes: the
match is recorded as "would have killed/denied".

deny rules are compiled (sentinel.actions.enforce_plan) into entries that the kernel half
(sentinel.actions.enforce_kernel) installs; an entry several rules need is installed once
and removed when the last of them goes (reference counts). kill rules are decided per
matched event here, after the safety checks: never pid 1, any pid-namespace init unless
the rule names proc.vpid, the agent, an allow-listed program, or beyond the rate limit.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from sentinel.actions.enforce_plan import ANY_UID, ENTRY_KINDS, DenyEntry, DenyPlan, Scope, compile_rules
from sentinel.config import EnforceConfig
from sentinel.errors import ConfigError, KernelError
from sentinel.log import get_logger
from sentinel.rules import ast

log = get_logger("sentinel.actions.enforce")

MODES = ("audit", "enforce")
Recorder = Callable[..., Any]  # Store.add_action(kind, target, rule=..., mode=..., outcome=..., detail=...)


def _names_field(node: ast.Expr, field_name: str) -> bool:
    if isinstance(node, (ast.BinaryCheck, ast.UnaryCheck)):
        return node.field.name == field_name
    if isinstance(node, ast.Not):
        return _names_field(node.child, field_name)
    if isinstance(node, (ast.And, ast.Or)):
        return any(_names_field(child, field_name) for child in node.children)
    return False


class RateLimiter:
    """At most `per_minute` events in any sliding 60 s window."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: deque[float] = deque()

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        while self._times and now - self._times[0] >= 60.0:
            self._times.popleft()
        if len(self._times) >= self.per_minute:
            return False
        self._times.append(now)
        return True


class Enforcer:
    """Owns modes, deny plans and their reference counts, kill safety and action records."""

    def __init__(self, config: EnforceConfig, record: Recorder, kernel: Any = None, agent_pid: int | None = None) -> None:
        import os

        if config.mode not in MODES:
            raise ConfigError("enforce.mode must be audit or enforce, not %r" % config.mode)
        self.config = config
        self.record = record
        self.kernel = kernel  # KernelEnforcer, or None where nothing may be loaded (tests, audit-only)
        self.agent_pid = agent_pid or os.getpid()
        self.global_mode = config.mode
        self.rule_modes: dict[str, str] = {}  # runtime overrides, by rule name
        self.rules: dict[str, Any] = {}  # rules with an action, by name
        self.plans: dict[str, DenyPlan] = {}
        self.references: Counter[DenyEntry] = Counter()
        self.manual: set[DenyEntry] = set()  # entries added through the control socket
        self.rate = RateLimiter(config.max_kills_per_minute)
        self.counters: Counter[str] = Counter()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ rules and modes
    @staticmethod
    def check_rules(rules: Iterable[Any]) -> dict[str, DenyPlan]:
        """Compile every deny rule (RuleError for one that cannot be pushed down)."""
        return compile_rules(rules)

    def apply_rules(self, rules: Iterable[Any], plans: dict[str, DenyPlan] | None = None) -> None:
        rules = list(rules)
        with self._lock:
            self.plans = plans if plans is not None else compile_rules(rules)
            self.rules = {r.name: r for r in rules if getattr(r, "action", None) in ("kill", "deny") and r.enabled}
            self._sync()

    def mode_of(self, rule_name: str) -> str:
        rule = self.rules.get(rule_name)
        own = self.rule_modes.get(rule_name) or (getattr(rule, "mode", None) if rule else None) or "audit"
        return "enforce" if self.global_mode == "enforce" and own == "enforce" else "audit"

    def set_mode(self, mode: str, rule: str | None = None) -> dict[str, Any]:
        if mode not in MODES:
            raise ConfigError("mode must be audit or enforce, not %r" % mode)
        with self._lock:
            if rule is None:
                self.global_mode = mode
            else:
                if rule not in self.rules:
                    raise ConfigError("no rule with an action is named %r" % rule)
                self.rule_modes[rule] = mode
            self._sync()
        self.record("mode", rule or "*", mode=mode, outcome="set")
        return self.modes()

    def modes(self) -> dict[str, Any]:
        return {"global": self.global_mode, "rules": {name: self.mode_of(name) for name in sorted(self.rules)}}

    def _sync(self) -> None:
        """Install the entries of deny rules in enforce mode; remove the rest."""
        wanted: Counter[DenyEntry] = Counter()
        for name, plan in self.plans.items():
            if self.mode_of(name) == "enforce":
                wanted.update(plan.entries)
        wanted.update(self.manual)
        if self.kernel is not None:
            for entry in sorted(set(self.references) - set(wanted)):
                self.kernel.remove(entry)
            for entry in sorted(set(wanted) - set(self.references)):
                try:
                    self.kernel.add(entry)
                except KernelError as exc:
                    log.error("enforce.entry_failed", entry=str(entry), error=str(exc))
                    self.record("deny", str(entry), outcome="failed", detail=str(exc))
                    del wanted[entry]
        self.references = wanted

    # ------------------------------------------------------------------ decisions
    def on_match(self, rule: Any, event: Any) -> str | None:
        """A rule with an action matched `event`: act (or say what would have happened) and record it."""
        action = getattr(rule, "action", None)
        if action not in ("kill", "deny"):
            return None
        mode = self.mode_of(rule.name)
        proc = event.proc
        target = "pid %d (%s)" % (proc.pid, proc.comm)
        if action == "deny":
            # The kernel already decided; the event says whether the operation failed.
            if mode == "audit":
                outcome = "would have denied"
            elif event.res < 0:
                outcome = "denied"
            else:
                outcome = self._after_the_fact(rule.name)
            self.record("deny", target, rule=rule.name, mode=mode, outcome=outcome, detail=event.type)
            return outcome
        refusal = self.refusal(proc, rule)
        if refusal:
            outcome = "refused: " + refusal
        elif mode == "audit":
            outcome = "would have killed"
        else:
            outcome = self._kill(proc.pid, proc.start_ns, event.time_ns)
        self.record("kill", target, rule=rule.name, mode=mode, outcome=outcome, detail=event.type)
        return outcome

    def _after_the_fact(self, rule_name: str) -> str:
        """The operation succeeded: a kill-at-exec/open mechanism kills right after it."""
        plan = self.plans.get(rule_name)
        mechanisms = {self.kernel.mechanism_for(e) for e in plan.entries} if plan and self.kernel is not None else set()
        killers = sorted(m for m in mechanisms if m.startswith("kill-at-"))
        return "killed by %s" % ",".join(killers) if killers else "not denied (entry not in the kernel yet)"

    def refusal(self, proc: Any, rule: Any = None) -> str:
        """Why `proc` must not be killed, or "" when it may be."""
        if proc.pid == 1:
            return "pid 1"
        if proc.pid == self.agent_pid:
            return "the agent itself"
        if getattr(proc, "vpid", 0) == 1 and not (rule is not None and _names_field(rule.expanded, "proc.vpid")):
            return "a pid namespace init (the rule does not name proc.vpid)"
        if proc.comm in self.config.allow_comms:
            return "allow-listed program name %s" % proc.comm
        if proc.exepath and proc.exepath in self.config.allow_exepaths:
            return "allow-listed executable %s" % proc.exepath
        if not self.rate.allow():
            self.counters["rate_limited"] += 1
            return "rate limit (%d kills per minute)" % self.config.max_kills_per_minute
        return ""

    def _kill(self, pid: int, start_ns: int, event_time_ns: int = 0) -> str:
        if self.kernel is None:
            return "failed: no kernel enforcement loaded"
        try:
            self.kernel.kill(pid, start_ns, event_time_ns)
        except KernelError as exc:
            return "failed: %s" % exc
        self.counters["kills"] += 1
        return "killed"

    def manual_kill(self, pid: int, start_ns: int | None, operator: str) -> str:
        """A kill asked for through the control socket (safety checks apply)."""
        from types import SimpleNamespace

        from sentinel.actions.enforce_kernel import process_start_ns

        start = start_ns if start_ns is not None else process_start_ns(pid)
        if start is None:
            outcome = "failed: no such process"
        else:
            comm, exepath = _comm_and_exe(pid)
            refusal = self.refusal(SimpleNamespace(pid=pid, vpid=0, comm=comm, exepath=exepath))
            outcome = "refused: " + refusal if refusal else self._kill(pid, start)
        self.record("kill", "pid %d" % pid, mode="enforce", outcome=outcome, detail="by " + operator)
        return outcome

    def manual_deny(self, entry: DenyEntry, add: bool, operator: str) -> str:
        with self._lock:
            (self.manual.add if add else self.manual.discard)(entry)
            self._sync()
        outcome = "installed" if add else "removed"
        self.record("deny", str(entry), mode="enforce", outcome=outcome, detail="by " + operator)
        return outcome

    def kernel_denial(self, kind: str, path: str, pid: int, scopes: tuple = ()) -> None:
        """The kernel refused an operation (a fanotify answer): recorded with the rules behind
        it, those whose entry for the file has a scope the process was found in."""
        entries = {DenyEntry("%s_file" % kind, path, scope=scope) for scope in scopes if isinstance(scope, Scope)}
        if not entries:
            entries = {e for plan in self.plans.values() for e in plan.entries if (e.kind, e.target) == ("%s_file" % kind, path)}
        rules = [name for name, plan in self.plans.items()
                 if entries & set(plan.entries) and self.mode_of(name) == "enforce"]
        self.record("deny", "pid %d %s %s" % (pid, kind, path), rule=",".join(rules) or None, mode="enforce", outcome="denied (EPERM)")

    # ------------------------------------------------------------------ listing
    def listing(self) -> dict[str, Any]:
        with self._lock:
            entries = [
                {"entry": str(entry), "references": count,
                 "mechanism": self.kernel.mechanism_for(entry) if self.kernel is not None else "none",
                 "rules": sorted(n for n, p in self.plans.items() if entry in p.entries and self.mode_of(n) == "enforce")
                 + (["(manual)"] if entry in self.manual else [])}
                for entry, count in sorted(self.references.items())
            ]
        return {
            "modes": self.modes(),
            "entries": entries,
            "kernel_maps": self.kernel.map_contents() if self.kernel is not None else {},
            "attached": self.kernel.attached() if self.kernel is not None else [],
            "counters": dict(self.counters),
        }


def _comm_and_exe(pid: int) -> tuple[str, str]:
    import os

    try:
        with open("/proc/%d/comm" % pid) as f:
            comm = f.read().strip()
    except OSError:
        comm = ""
    try:
        exe = os.readlink("/proc/%d/exe" % pid)
    except OSError:
        exe = ""
    return comm, exe


# ---------------------------------------------------------------------- agent wiring


class AgentEnforcement:
    """What the agent holds: the Enforcer, its kernel half, and the records the kernel's
    threads (fanotify answers, kill reaper) leave for the agent's own thread to store."""

    def __init__(self, enforcer: Enforcer, kernel: Any, store_action: Recorder) -> None:
        self.enforcer = enforcer
        self.kernel = kernel
        self.store_action = store_action
        self._pending: deque[tuple[tuple[Any, ...], dict[str, Any]]] = deque()

    def defer(self, *args: Any, **details: Any) -> None:
        """Record later, from the agent's thread (called from the kernel's threads)."""
        self._pending.append((args, details))

    def drain(self) -> None:
        while self._pending:
            args, details = self._pending.popleft()
            self.store_action(*args, **details)

    def housekeeping(self) -> None:
        """Store what the kernel's threads recorded (replaced paths are followed by the
        kernel half's own inotify watcher, not here)."""
        self.drain()

    def close(self) -> list[str]:
        kept = self.kernel.close() if self.kernel is not None else []
        self.drain()
        return kept

    # control commands: handler(request, peer)
    def control_handlers(self) -> dict[str, Callable[[dict[str, Any], Any], Any]]:
        return {"kill": self._control_kill, "deny": self._control_deny, "mode": self._control_mode,
                "enforce_list": lambda request, peer: self.enforcer.listing()}

    def _control_kill(self, request: dict[str, Any], peer: Any) -> dict[str, Any]:
        pid, start_ns = request.get("pid"), request.get("start_ns")
        if not isinstance(pid, int) or (start_ns is not None and not isinstance(start_ns, int)):
            raise ConfigError("kill needs pid (and optionally start_ns) as integers")
        return {"outcome": self.enforcer.manual_kill(pid, start_ns, "uid %d" % peer.uid)}

    def _control_deny(self, request: dict[str, Any], peer: Any) -> dict[str, Any]:
        kind, target, port = request.get("kind"), request.get("target"), request.get("port", 0)
        if kind not in ENTRY_KINDS or not isinstance(target, str):
            raise ConfigError("deny needs kind (%s) and target" % ", ".join(ENTRY_KINDS))
        if not isinstance(port, int) or not 0 <= port < 65536:
            raise ConfigError("deny: port must be 0..65535")
        uid, cgroup = request.get("uid", ANY_UID), request.get("cgroup", "")
        if not isinstance(uid, int) or not ANY_UID <= uid < 0xFFFFFFFF or not isinstance(cgroup, str) or (cgroup and not cgroup.startswith("/")):
            raise ConfigError("deny: uid must be a uid, cgroup a path under the cgroup2 mount")
        scope = Scope(uid, cgroup and (cgroup.rstrip("/") or "/"), bool(cgroup and request.get("below", False)))
        entry = DenyEntry(kind, target, port, scope)
        return {"outcome": self.enforcer.manual_deny(entry, not request.get("remove", False), "uid %d" % peer.uid)}

    def _control_mode(self, request: dict[str, Any], peer: Any) -> dict[str, Any]:
        return self.enforcer.set_mode(str(request.get("mode")), request.get("rule"))


def start_enforcement(config: Any, store_action: Recorder, rules: Iterable[Any], agent_pid: int) -> AgentEnforcement:
    """Probe the mechanisms, load the kernel half (audit-only if it cannot load) and apply `rules`."""
    from sentinel.kernel import probe

    holder: list[AgentEnforcement] = []

    def defer(*args: Any, **details: Any) -> None:
        holder[0].defer(*args, **details)

    kernel = None
    enforcer_ref: list[Enforcer] = []
    try:
        from sentinel.actions.enforce_kernel import KernelEnforcer

        mechanisms = probe.enforcement_mechanisms(probe.run_probes(config.sensor.btf_cache_dir))
        kernel = KernelEnforcer(
            mechanisms,
            agent_pid=agent_pid,
            keep_on_exit=config.enforce.keep_on_exit,
            on_denial=lambda denial: enforcer_ref[0].kernel_denial(denial.kind, denial.path, denial.pid, denial.scopes),
            on_kill_done=lambda result: defer(
                "kill_done", "pid %d" % result.pid, mode="enforce", outcome="dead",
                detail="dead %.2f ms after the decision, %.2f ms after the event%s"
                % (result.latency_ms, result.event_to_death_ms, ", pidfd backstop" if result.backstop else "")),
        )
        kernel.set_allowed_exes(config.enforce.allow_exepaths)
        log.info("enforce.mechanisms", **{"mechanism." + k: ",".join(v) or "none" for k, v in mechanisms.items()})
    except Exception as exc:  # bcc raises bare exceptions; enforcement must not stop detection
        log.error("enforce.unavailable", error=str(exc))
        kernel = None
    enforcer = Enforcer(config.enforce, defer, kernel, agent_pid=agent_pid)
    enforcer_ref.append(enforcer)
    wiring = AgentEnforcement(enforcer, kernel, store_action)
    holder.append(wiring)
    enforcer.apply_rules(rules)
    if kernel is not None:
        kernel.take_over_pins()
    return wiring


def format_listing(listing: dict[str, Any]) -> str:
    """`sentinel enforce list` as text: modes, entries with their rules, then the kernel maps."""
    lines = ["global mode: %s" % listing["modes"]["global"]]
    for name, mode in listing["modes"]["rules"].items():
        lines.append("  rule %-40s %s" % (name, mode))
    lines.append("entries (%d):" % len(listing["entries"]))
    for entry in listing["entries"]:
        lines.append("  %-50s %-16s refs=%d  %s" % (entry["entry"], entry["mechanism"], entry["references"], ", ".join(entry["rules"])))
    lines.append("attached: %s" % (", ".join(listing["attached"]) or "nothing"))
    lines.append("kernel maps now:")
    for map_name, rows in listing["kernel_maps"].items():
        lines.append("  %s (%d)" % (map_name, len(rows)))
        lines.extend("    %s" % " ".join("%s=%s" % item for item in row.items()) for row in rows)
    return "\n".join(lines)


def kernel_objects_text() -> str:
    """What sentinel has in the kernel when no agent answers: programs, maps (with their
    entries, through bpftool), cgroup attachments and pins."""
    import json
    import subprocess

    from sentinel.kernel import hygiene

    objects = hygiene.list_sentinel_objects()
    lines = ["programs: %s" % (", ".join("%s (id %s)" % (p.get("name"), p.get("id")) for p in objects.programs) or "none")]
    lines.append("cgroup attachments: %s" % (", ".join("%s %s on %s" % (a.name, a.attach_type, a.cgroup) for a in objects.cgroup_attachments) or "none"))
    lines.append("pins: %s" % (", ".join(objects.pins) or "none"))
    enforcement_maps = [m for m in objects.maps if m.get("name", "").startswith(("snt_deny", "snt_kill", "snt_allow", "snt_enf"))]
    for entry in enforcement_maps:
        dumped = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(entry["id"])], capture_output=True, text=True)
        try:
            count = len(json.loads(dumped.stdout or "[]"))
        except ValueError:
            count = -1
        lines.append("map %s (id %s, %s): %d entries" % (entry.get("name"), entry.get("id"), entry.get("type"), count))
    return "\n".join(lines)
