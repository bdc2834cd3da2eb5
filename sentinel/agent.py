"""`sentinel run`: the background agent that wires sensors, rules, alerts and the store.

Threads: the sensor's ring-buffer poller only copies bytes; this module's consumer thread
decodes, enriches, evaluates the rules and hands matched events to the alert writer and
the store writer (which batches on its own thread). Signals only set flags; the consumer
acts on them between batches, so a reload or a stop never happens mid-event.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import hashlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sentinel import __version__, notify
from sentinel.actions.alert import AlertWriter, HostIdentity, alert_record
from sentinel.actions.forward.records import event_record
from sentinel.actions.record import PRIORITIES, ancestry_of, event_fields, new_id, normalise_priority
from sentinel.config import Config
from sentinel.control import ControlError, ControlServer
from sentinel.errors import SentinelError, StoreError
from sentinel.events.interest import Interest
from sentinel.events.model import Event
from sentinel.log import get_logger
from sentinel.selfprotect import self_protection_rules

log = get_logger("sentinel.agent")

EXEC_TYPES = frozenset({"execve", "execveat"})



def ruleset_version(paths: list[Path]) -> str:
    """A short digest of the rule files' contents: alerts say which rule set raised them."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            pass
    return digest.hexdigest()[:12]


class Agent:
    """Owns every long-lived part; `run()` blocks until SIGTERM/SIGINT and then flushes."""

    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.pid = os.getpid()
        self.host = HostIdentity.current()
        self.counters: Counter[str] = Counter()
        self.alerts_per_rule: Counter[str] = Counter()
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._reopen_requested = threading.Event()
        self.started_at = time.time()
        self.start_seconds: dict[str, float] = {}  # wall time of each start phase, in order
        self.rules_load_seconds = 0.0  # the last load (at start it runs alongside the enforcement phase)
        self.ruleset: Any = None
        self.ruleset_version = ""
        self.rules_snapshot: dict[Path, float] = {}  # the files (and mtimes) last loaded or tried
        self.store: Any = None
        self.store_error = ""
        self.sensor: Any = None
        self.table: Any = None
        self.alerts = AlertWriter(config.alerts.file, flush_each=False)  # flushed after each batch of events
        self.control: ControlServer | None = None
        self.kernel_lock: Any = None
        self.enforcement: Any = None  # sentinel.actions.enforce.AgentEnforcement
        self.forwarder: Any = None
        self.forward_events = any(output.options.get("events") for output in config.outputs)
        self.min_priority = PRIORITIES.index(normalise_priority(config.alerts.min_priority))
        self.last_lost = 0

    # ----------------------------------------------------------------- rules
    def load_rules(self) -> None:
        """Validate the whole rule set first; only a set that loads fully replaces the old one."""
        from sentinel.rules.ruleset import load_rules

        started = time.monotonic()
        self.rules_snapshot = self._rules_on_disk()
        guards = self_protection_rules(self.config, self.pid, self.config_path)
        ruleset = load_rules(list(self.config.rule_paths), extra=guards, match=self.config.alerts.match)
        from sentinel.actions.enforce import Enforcer

        deny_plans = Enforcer.check_rules(ruleset.rules)  # a deny rule the kernel cannot enforce fails the load
        self.ruleset = ruleset
        if self.enforcement is not None:
            self.enforcement.enforcer.apply_rules(ruleset.rules, deny_plans)
        self.ruleset_version = ruleset_version(list(self.rules_snapshot))
        for problem in ruleset.warnings:
            if problem.item.startswith("sigma rule"):  # a Sigma rule the host cannot evaluate: say why
                log.warning("rules.sigma_skipped", **{"rule.name": problem.item[len("sigma rule '"):-1],
                                                      "rule.location": str(problem.location), "reason": problem.message})
        sigma_counts = {"rules." + key: n for key, n in ruleset.counts.items() if key.startswith("sigma_")}
        self.rules_load_seconds = round(time.monotonic() - started, 3)
        log.info("rules.loaded", **{"rules.count": len(ruleset.rules), "rules.version": self.ruleset_version,
                                    "rules.load_seconds": self.rules_load_seconds, **sigma_counts})

    def reload_rules(self) -> dict[str, Any]:
        previous = self.ruleset_version
        try:
            self.load_rules()
        except SentinelError as exc:
            self.counters["reload_failed"] += 1
            log.error("rules.reload_failed", error=str(exc))
            self._internal_alert("Sentinel rule reload failed", "error", "Rule reload failed, previous rules kept: %s" % exc)
            return {"ok": False, "error": str(exc), "version": previous}
        if self.sensor is not None:
            self.sensor.update_interest(self.interest())
        release_free_heap()
        self.counters["reloads"] += 1
        return {"ok": True, "version": self.ruleset_version, "previous": previous}

    def interest(self) -> Interest:
        always = Interest(event_types=frozenset(self.config.store.always_store))
        return self.ruleset.interest.union(always)

    # ----------------------------------------------------------------- events
    def handle(self, event: Event) -> None:
        self.counters["events"] += 1
        if event.proc.pid == self.pid:
            self.counters["own_events"] += 1
            return
        matches = self.ruleset.match(event)
        if matches and self.enforcement is not None:
            for rule in matches:  # enforcement first: a kill must not wait for the store
                if rule.action is not None:
                    self.enforcement.enforcer.on_match(rule, event)
        event_id = None
        if self.store is not None:
            event_id = self.store.add_event(event, matched=bool(matches))
            if event_id is not None:
                self.counters["stored_events"] += 1
            if event.type in EXEC_TYPES and event.res >= 0:
                self.store.upsert_process(event.proc)
        if self.forward_events:
            event_id = event_id or new_id()
            fields = event_fields(event, event_id, bool(matches))
            self.forwarder.submit(event_record(self.host, fields, time_ns=event.time_ns, record_id=event_id))
        for rule in matches:
            self.raise_alert(rule, event, event_id)

    def raise_alert(self, rule: Any, event: Event, event_id: Any) -> None:
        self.alerts_per_rule[rule.name] += 1
        self.counters["alerts"] += 1
        priority = normalise_priority(rule.priority)
        if PRIORITIES.index(priority) > self.min_priority:
            return
        output, output_fields = rule.render_with_fields(event)
        record = alert_record(
            rule=rule.name,
            priority=priority,
            output=output,
            tags=rule.tags,
            output_fields=output_fields,
            time_ns=event.time_ns,
            host=self.host,
            ruleset_version=self.ruleset_version,
            source=getattr(rule, "source", "syscall") or "syscall",
            extra=getattr(rule, "extra", None) or None,
        )
        self.alerts.write(record)
        if self.forwarder is not None:
            self.forwarder.submit(record)
        if self.store is not None:
            self.store.add_alert(record, event_id, ancestry_of(event.proc), time_ns=event.time_ns)

    def _internal_alert(self, rule: str, priority: str, output: str, fields: dict[str, Any] | None = None) -> None:
        """Alerts about the agent itself (drops, failed reloads): never silent."""
        record = alert_record(
            rule=rule,
            priority=priority,
            output=output,
            tags=["sentinel", "health"],
            output_fields=fields or {},
            time_ns=time.time_ns(),
            host=self.host,
            ruleset_version=self.ruleset_version,
            source="internal",
        )
        self.alerts.write(record)
        if self.forwarder is not None:
            self.forwarder.submit(record)
        if self.store is not None:
            self.store.add_alert(record, None, [])

    def check_drops(self) -> None:
        lost = sum(self.sensor.lost().values())
        if lost > self.last_lost:
            delta = lost - self.last_lost
            self.last_lost = lost
            self.counters["kernel_lost"] = lost
            self._internal_alert(
                "Sentinel dropped kernel events",
                "critical",
                "The kernel ring buffer was full: %d event records were lost" % delta,
                {"lost.records": delta, "lost.total": lost},
            )

    # ----------------------------------------------------------------- status
    def status(self, request: dict[str, Any] | None = None, peer: Any = None) -> dict[str, Any]:
        uptime = time.time() - self.started_at
        status = {
            "version": __version__,
            "pid": self.pid,
            "uptime_seconds": round(uptime, 1),
            "start_seconds": self.start_seconds,
            "rules_load_seconds": self.rules_load_seconds,
            "ruleset_version": self.ruleset_version,
            "rules": len(self.ruleset.rules) if self.ruleset else 0,
            "counters": dict(self.counters),
            "events_per_second": round(self.counters["events"] / uptime, 1) if uptime else 0.0,
            "alerts_per_rule": dict(self.alerts_per_rule),
            "store": self.store.status() if self.store is not None else {"error": self.store_error},
            "kernel_lost": sum(self.sensor.lost().values()) if self.sensor is not None else 0,
            "kernel_retried": self.sensor.retried() if self.sensor is not None else 0,
            "records_received": self.sensor.records_received if self.sensor is not None else 0,
            "process_table": self.table.stats() if self.table is not None else {},
            "forwarding": [dataclasses.asdict(output) for output in self.forwarder.status()] if self.forwarder else [],
        }
        return status

    def acknowledge(self, request: dict[str, Any], peer: Any) -> dict[str, Any]:
        """Control command `ack` (alert_ids: [...]): the analyst saw these alerts; recorded as actions."""
        alert_ids = request.get("alert_ids")
        if not isinstance(alert_ids, list) or not alert_ids or not all(isinstance(i, str) for i in alert_ids):
            raise ControlError("ack needs alert_ids: a non-empty list of alert ids")
        if self.store is None:
            raise ControlError("the store is unavailable: %s" % self.store_error)
        changed = self.store.acknowledge(alert_ids, "uid %d" % peer.uid)
        return {"acknowledged": changed, "requested": len(alert_ids)}

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start every part; if one fails, stop the ones already running and re-raise, so the
        process exits (an agent half up, with threads holding it alive, would hang)."""
        try:
            self._start()
        except BaseException as exc:
            log.error("agent.start_failed", error=str(exc))
            self.shutdown()
            raise

    def _start(self) -> None:
        lap = self._start_timer()
        self._open_store()  # the store process opens the database while the rules and programs load
        lap("store_spawn")
        # The rule files compile in Python while the kernel probes and the enforcement programs
        # compile in libbcc, which releases the GIL: on two cores the rules cost no wall time.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentinel-rules") as pool:
            rules_loading = pool.submit(self.load_rules)
            if self._earlier_enforcement_kept():
                rules_loading.result()  # a broken rule file must leave that enforcement in force
            self._claim_kernel()
            lap("kernel_claim")
            self._start_enforcement(self._rules_once_loaded(rules_loading))
            rules_loading.result()  # a rule error stops the start here, with enforcement closed by shutdown()
        lap("enforcement_and_rules")
        self._start_forwarding()
        self._await_store()
        lap("store_wait")
        from sentinel.enrich.proctable import ProcessTable
        from sentinel.sensor import Sensor

        self.table = ProcessTable(self.config.sensor)
        self.sensor = Sensor(self.config, self.interest(), table=self.table)
        self.sensor.start(bootstrap=True)
        lap("sensor")
        # The bootstrap's thousands of long-lived objects would otherwise be rescanned by every
        # full garbage collection (tens of ms on a busy host): move them out of its way.
        gc.freeze()
        release_free_heap()
        self.control = ControlServer(
            self.config.control_socket,
            allowed_uids=self.config.control.allowed_uids,
            allowed_gids=self.config.control.allowed_gids,
        )
        self.control.register("status", self.status)
        self.control.register("reload", lambda request, peer: self.reload_rules())
        self.control.register("ack", self.acknowledge)
        for command, handler in self.enforcement.control_handlers().items():
            self.control.register(command, handler)
        self.control.start()
        self._start_metrics()
        notify.notify("READY=1")
        log.info("agent.ready", **{"agent.pid": self.pid, "store.path": self.config.db_path})

    def _start_timer(self) -> Callable[[str], None]:
        """Seconds spent in each start phase, for `sentinel status` (where READY's time goes)."""
        last = [time.monotonic()]

        def lap(phase: str) -> None:
            now = time.monotonic()
            self.start_seconds[phase] = round(now - last[0], 3)
            last[0] = now

        return lap

    def _claim_kernel(self) -> None:
        """Mount what the sensors need, then remove what an earlier agent of ours left behind.

        A second agent on the same host (a test beside a service) leaves the first one's
        objects alone: only the lock holder may clean.
        """
        from sentinel.kernel import hygiene, probe

        probe.ensure_kernel_filesystems()
        try:
            self.kernel_lock = hygiene.acquire_kernel_lock()
        except SentinelError as exc:
            self.kernel_lock = None
            log.warning("kernel.lock_busy", error=str(exc))
            return
        removed = hygiene.cleanup_leftovers(self.kernel_lock, keep_pins=self.config.enforce.keep_on_exit)
        for line in removed:
            log.warning("kernel.leftover_removed", detail=line)

    def _start_enforcement(self, rules: Iterable[Any]) -> None:
        from sentinel.actions.enforce import start_enforcement

        self.enforcement = start_enforcement(self.config, self._record_action, rules, self.pid)

    @staticmethod
    def _earlier_enforcement_kept() -> bool:
        """Whether an earlier agent left its denies pinned (enforce.keep_on_exit): the enforcer
        takes them over, so it may only start once this agent's rules are known to load."""
        from sentinel.actions.enforce_kernel import PIN_DIR

        try:
            return bool(os.listdir(PIN_DIR))
        except OSError:
            return False

    def _rules_once_loaded(self, loading: Future[None]) -> Iterator[Any]:
        """The rules, waited for only when the enforcer applies them (after its programs are
        loaded, before it takes over an earlier agent's pins); none if they failed to load."""
        if loading.exception() is None:
            yield from self.ruleset.rules

    def _record_action(self, kind: str, target: str, **details: Any) -> None:
        details = {key: value for key, value in details.items() if value is not None}
        log.info("enforce.action", kind=kind, target=target, **details)
        if self.store is not None:
            self.store.add_action(kind, target, **details)

    def _open_store(self) -> None:
        from sentinel.actions.store import StoreWriter

        try:
            self.store = StoreWriter.from_config(self.config, wait=False)
        except StoreError as exc:
            self._store_unavailable(exc)

    def _await_store(self) -> None:
        if self.store is None:
            return
        try:
            self.store.wait_open()
        except StoreError as exc:
            self._store_unavailable(exc)

    def _store_unavailable(self, exc: StoreError) -> None:
        # Alerts must keep flowing even when the DB cannot be written.
        self.store = None
        self.store_error = str(exc)
        log.error("store.unavailable", error=str(exc))
        self._internal_alert("Sentinel store unavailable", "error", "Events are not stored: %s" % exc)

    def _start_forwarding(self) -> None:
        if not self.config.outputs:
            return
        from sentinel.actions.forward import Forwarder

        self.forwarder = Forwarder.from_config(
            self.config, identity=self.host, ruleset_version=self.ruleset_version, on_loss=self._forwarding_lost
        )
        self.forwarder.start()

    def _forwarding_lost(self, output: str, count: int) -> None:
        self.counters["forward_lost"] += count
        self._internal_alert(
            "Sentinel forwarding records lost",
            "critical",
            "%d records for output %s were dropped before delivery" % (count, output),
            {"output.name": output, "lost.records": count},
        )

    def _start_metrics(self) -> None:
        if not self.config.metrics.listen:
            return
        from sentinel.metrics import serve_metrics

        serve_metrics(self.config.metrics.listen, self)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())

        def on_hup(*_: Any) -> None:
            self._reload_requested.set()
            self._reopen_requested.set()

        signal.signal(signal.SIGHUP, on_hup)

    def run(self) -> None:
        """Consume events until asked to stop; then flush everything accepted."""
        watchdog = Watchdog()
        next_housekeeping = time.monotonic() + 1.0
        while not self._stop.is_set():
            for event in self.sensor.poll(timeout=0.2):
                self.handle(event)
            self.alerts.flush()
            now = time.monotonic()
            watchdog.ping(now)
            if now >= next_housekeeping:
                next_housekeeping = now + 1.0
                self.housekeeping()
        self.shutdown()

    def housekeeping(self) -> None:
        self.alerts.flush()  # alerts about the agent itself, raised from other threads
        if self._reopen_requested.is_set():
            self._reopen_requested.clear()
            self.alerts.reopen()
            if self.forwarder is not None:
                self.forwarder.reopen()
        if self._reload_requested.is_set() or self._rules_on_disk() != self.rules_snapshot:
            self._reload_requested.clear()
            self.reload_rules()
        self.check_drops()
        if self.enforcement is not None:
            self.enforcement.housekeeping()
        # Lost events must not poison the process table on an idle host either.
        self.table.maybe_reconcile()

    def _rules_on_disk(self) -> dict[Path, float]:
        """Rule files now (folders rescanned, so a new file counts as a change) and their mtimes."""
        from sentinel.rules.loader import expand_paths

        return {Path(path): _mtime(Path(path)) for path in expand_paths(list(self.config.rule_paths))}

    def stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        notify.notify("STOPPING=1")
        log.info("agent.stopping")
        if self.sensor is not None:
            # Drain what the kernel already handed over (if it got that far), then detach.
            if self.sensor.attached and self.ruleset is not None:
                for event in self.sensor.poll(timeout=0.05):
                    self.handle(event)
            self.sensor.close()
        if self.enforcement is not None:
            kept = self.enforcement.close()  # fail-open unless keep_on_exit
            if kept:
                log.warning("enforce.active_after_exit", kept=kept)
        if self.control is not None:
            self.control.stop()
        if self.forwarder is not None:
            self.forwarder.stop()
        store_stats = {}
        if self.store is not None:
            self.store.close()
            store_stats = self.store.stats.as_dict()
        self.alerts.close()
        if self.kernel_lock is not None:
            self.kernel_lock.release()
        log.info(
            "agent.stopped",
            store=store_stats,
            **{
                "events.total": self.counters["events"],
                "events.stored": self.counters["stored_events"],
                "alerts.total": self.counters["alerts"],
            },
        )


class Watchdog:
    """Sends WATCHDOG=1 at half of $WATCHDOG_USEC, from the consumer loop: if it stalls, systemd restarts us."""

    def __init__(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.interval = int(usec) / 2e6 if enabled else None
        self._next = 0.0

    def ping(self, now: float) -> None:
        if self.interval is not None and now >= self._next:
            self._next = now + self.interval
            notify.notify("WATCHDOG=1")


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the kernel. Compiling BPF programs (LLVM) and rules
    frees tens of MB that glibc keeps mapped otherwise (measured: agent RSS 232 -> 187 MB)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0
