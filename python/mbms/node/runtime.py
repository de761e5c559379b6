"""The real-time runtime of one node: an asyncio loop around a sans-IO :class:`NodeLogic`.

Every control period: read the latest sample from the hardware -> ``logic.step`` -> command the
contactors and balancing switches -> broadcast the logic's messages; every telemetry period the
DBC telemetry frames; every ``state_save_ms`` the logic's state, atomically. Peer messages are
handed to ``logic.receive`` as they arrive (same thread, between periods).

Fail-safe (brief S1 and "on any doubt, open"): the runtime itself commands all contactors open,
without asking the logic, when

* the latest sample is older than ``stale_ms`` or the hardware link timed out,
* the hardware marks the sample invalid, or there is no sample yet,
* the loop wakes up more than ``overrun_ms`` after its schedule (overrun),
* the logic raised an exception.

It tells the logic once (``logic.fail_safe``), hands it the sample marked ``valid=False`` while the
condition lasts, and passes the logic's commands through again only once the condition has
cleared AND the logic itself has commanded all-open in some period after being told (re-arm), so
a logic that missed the news can never close a main contactor without a fresh precharge.

Two-phase main close (brief S3, issue 11): the sample a period works on was taken when the
previous period's command went out, about one period earlier. When the logic's precharge dwell is
over it does not close on that sample: it returns ``sample_request``; the runtime then asks the
hardware for a sample at once (``Hardware.fresh_sample``), steps the logic again with it as soon
as it arrives, before the next period, and sends the resulting command (the main contactor, or
an abort) at once. If no sample comes before the next period, the logic aborts by its own
deadline.

Timing: the wake-up lateness (period jitter) and the ``logic.step`` time of every period are kept
(:class:`LoopTiming`) for the report (``mbms node --timing``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mbms.errors import opening
from mbms.hardware.base import Hardware
from mbms.config_views import NodeSection
from mbms.node.logic import ALL_OPEN, Contactors, Measurement, NodeLogic, NodeOutput, NodeStatus
from mbms.node.persistence import BackgroundSaver, StateStore
from mbms.telemetry import TelemetryEncoder
from mbms.transport.base import Transport

log = logging.getLogger("mbms.node")

#: A duplicate-id episode ends when the id was heard clean this long; a later one alarms again.
DUPLICATE_QUIET_S = 10.0


class LoopTiming:
    """Period jitter (wake-up lateness) and step time of the last ``capacity`` periods, in ms."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.jitter_ms = np.zeros(capacity)
        self.step_ms = np.zeros(capacity)
        self.work_ms = np.zeros(capacity)  # the whole period: read, step, command, send, save
        self.count = 0
        self.overruns = 0
        self.skipped_periods = 0

    def add(self, jitter_ms: float, step_ms: float) -> None:
        i = self.count % len(self.jitter_ms)
        self.jitter_ms[i] = jitter_ms
        self.step_ms[i] = step_ms
        self.count += 1

    def set_work(self, work_ms: float) -> None:
        if self.count:
            self.work_ms[(self.count - 1) % len(self.work_ms)] = work_ms

    def summary(self) -> dict[str, float]:
        n = min(self.count, len(self.jitter_ms))
        if n == 0:
            return {"periods": 0}
        j, s, w = self.jitter_ms[:n], self.step_ms[:n], self.work_ms[:n]
        return {
            "periods": self.count, "overruns": self.overruns, "skipped_periods": self.skipped_periods,
            "jitter_ms_mean": float(j.mean()), "jitter_ms_p99": float(np.percentile(j, 99)),
            "jitter_ms_max": float(j.max()), "step_ms_mean": float(s.mean()),
            "step_ms_p99": float(np.percentile(s, 99)), "step_ms_max": float(s.max()),
            "work_ms_mean": float(w.mean()), "work_ms_p99": float(np.percentile(w, 99)), "work_ms_max": float(w.max()),
        }


class NodeRuntime:
    def __init__(self, node: NodeSection, logic: NodeLogic, hardware: Hardware,
                 transport: Transport | None = None, store: StateStore | None = None,
                 telemetry: TelemetryEncoder | None = None, clock: Any = time.monotonic) -> None:
        self.node = node
        self.logic = logic
        self.hw = hardware
        self.transport = transport
        self.store = store
        self.saver: BackgroundSaver | None = None  # started by run(); period() then saves off-loop
        self.telemetry = telemetry
        self.clock = clock
        self.timing = LoopTiming()
        self.fail_safe_reason: str | None = None
        self.rearm_pending = False
        self._logic_opened = True
        self.fail_safe_count = 0
        self.rejected_messages = 0
        self.accepted_messages = 0
        self.send_errors = 0
        self.status: NodeStatus | None = None
        self.meas: Measurement | None = None
        self.commanded: Contactors = ALL_OPEN
        self.periods = 0
        self.restored = "not attempted"
        self._transport_open = False
        self._duplicate_seen: dict[int, float] = {}  # node id -> last duplicate_id event (clock s)
        self.duplicate_events = 0  # every duplicate_id event of the peer protocol
        self.duplicate_alarms = 0  # episodes logged as an error
        self._t0 = clock()
        self._last_save = float("-inf")
        self._last_telemetry = float("-inf")
        self._last_faults: tuple[tuple[Any, ...], str | None] = ((), None)
        self._last_phase: Any = None
        self._sample_request = False
        self.verify_steps = 0
        # Operator gateways (issue 13: MQTT, metrics, UDS, web, systemd watchdog). A period hook
        # runs on the loop after each period and must only copy or enqueue (never block); an
        # event sink gets each event-log record. A failing hook is counted, never stops a period.
        self.period_hooks: list[Callable[[NodeRuntime, float], None]] = []
        self.event_sinks: list[Callable[[dict[str, Any]], None]] = []
        self.hook_errors = 0
        self.peer_event_counts: collections.Counter[str] = collections.Counter()  # by kind (metrics)
        #: The inverter link (mbms.gateways.inverter_can.InverterGateway), if the system has one.
        self.inverter: Any = None
        self._join_in_progress = False

    # ------------------------------------------------------------------ helpers
    def t_ms(self, now: float | None = None) -> int:
        return int(((self.clock() if now is None else now) - self._t0) * 1000)

    def _event(self, kind: str, **fields: Any) -> None:
        if self.store is not None:
            self.store.event(kind, **fields)
        if self.event_sinks:
            rec = {"t": round(time.time(), 3), "node": self.node.id, "kind": kind, **fields}
            for sink in self.event_sinks:
                try:
                    sink(rec)
                except Exception:
                    self.hook_errors += 1
                    log.exception("event sink failed")

    def restore(self) -> str:
        """Restore the logic's state from the store: "ok", "partial" (implausible values dropped),
        "missing", "corrupt" or "implausible" (the whole file: e.g. saved in the future)."""
        if self.store is None:
            self.restored = "missing"
            return self.restored
        res = self.store.load()
        self.restored = res.status
        if res.data is not None:
            try:
                dropped = self.logic.import_state(res.data) or []
            except ValueError as exc:
                self.store.quarantine(f"logic rejected the state: {exc}")
                self.restored = "corrupt"
                return self.restored
            if dropped:
                # a valid checksum, nonsense inside (SOC 150 %, 1e6 Ah): the logic kept what is
                # plausible and starts the rest from the measurements
                log.warning("saved state %s: implausible values dropped: %s", self.store.state_path, "; ".join(dropped))
                self.store.event("state_implausible", dropped=list(dropped))
                self.restored = "partial"
            else:
                log.info("state restored from %s", self.store.state_path)
        self._restore_receive_counters()
        return self.restored

    def _restore_receive_counters(self) -> None:
        """The peer's receive counters of the previous run (brief S7): before the transport
        opens, so that no replay of what that run accepted is taken as a first contact."""
        restore = getattr(self.logic, "restore_receive_counters", None)
        if restore is None or self.store is None:
            return
        from mbms.node.persistence import load_receive_counters

        rx = load_receive_counters(self.store.dir)
        if rx.status == "corrupt":
            self.store.event("rx_counters_corrupt", detail=rx.detail)
        taken = restore(rx.counters) if rx.counters else 0
        if rx.status == "ok":
            log.info("receive counters of %d peer(s) restored", taken)

    def _receive_counters(self) -> list[tuple[int, int, int]] | None:
        get = getattr(self.logic, "receive_counters", None)
        return None if get is None else get()

    # -------------------------------------------------------------- receiving
    def _on_message(self, src: int, payload: bytes) -> None:
        try:
            ok = self.logic.receive(self.t_ms(), payload)
        except Exception:  # a bug in the logic must not kill the receive path
            log.exception("logic.receive raised on a message from node %d", src)
            ok = False
        if ok:
            self.accepted_messages += 1
        else:
            self.rejected_messages += 1

    # ------------------------------------------------------------ one period
    def period(self, now: float, lateness_s: float, verify: bool = False) -> None:
        """One control period; ``verify``: the extra step on a fresh sample of a two-phase close
        (no telemetry, saving or period count of its own)."""
        t_work = time.perf_counter()
        t_ms = self.t_ms(now)
        reasons = []
        if lateness_s * 1000 > self.node.overrun_ms:
            self.timing.overruns += 1
            reasons.append(f"loop overrun: {lateness_s * 1000:.0f} ms late")
        sample = self.hw.read()
        meas: Measurement | None = None
        if sample is None:
            if (now - self._t0) * 1000 > self.node.stale_ms:
                # (within the first stale_ms the contactors stay open without a fail-safe: start-up)
                reasons.append(self.hw.diagnosis() or "no measurement yet")
        else:
            meas, arrived = sample
            if (now - arrived) * 1000 > self.node.stale_ms:
                reasons.append(f"stale measurement: {(now - arrived) * 1000:.0f} ms old")
            if not meas.valid:
                reasons.append(self.hw.diagnosis() or "measurement marked invalid")
        if not self.hw.link_ok(now) and sample is not None:
            reasons.append("hardware link lost")
        if meas is not None:
            age_ms = max(0.0, (now - sample[1]) * 1000) if sample is not None else 0.0
            meas = dataclasses.replace(meas, valid=meas.valid and not reasons, age_ms=age_ms)

        out: NodeOutput | None = None
        step_s = 0.0
        if meas is not None:
            t1 = time.perf_counter()
            try:
                out = self.logic.step(t_ms, meas)
            except Exception:
                log.exception("logic.step raised")
                reasons.append("logic error")
            step_s = time.perf_counter() - t1
        if not verify:
            self.timing.add(lateness_s * 1000, step_s * 1000)

        entered = self._update_fail_safe(t_ms, reasons)
        cmd = out.contactors if out is not None else ALL_OPEN
        if self.fail_safe_reason is not None or self.rearm_pending:
            if out is not None and not cmd.any_closed() and not entered:
                self._logic_opened = True  # the logic has taken the news: it commands all-open itself
            if self.fail_safe_reason is None and self._logic_opened:
                self.rearm_pending = False
                log.info("re-armed: the logic commanded all-open after the fail-safe")
                self._event("rearmed", t_ms=t_ms)
            else:
                cmd = ALL_OPEN
        n_cells = len(meas.v_cell_v) if meas is not None else 0
        balance = np.zeros(n_cells, dtype=bool)
        if out is not None and self.fail_safe_reason is None and len(out.balance) == n_cells:
            balance = np.asarray(out.balance, dtype=bool)
        self.hw.command(cmd, balance)
        self.commanded = cmd
        self.meas = meas
        self._sample_request = out is not None and out.sample_request and self.fail_safe_reason is None
        if out is not None:
            self._join_in_progress = out.join_in_progress
            if out.status is not None:
                self._observe_status(t_ms, out.status)
            if out.events:
                self._peer_events(t_ms, now, out.events)
            self._send_messages(out.messages)
        if verify:
            self.verify_steps += 1
            return
        self._periodic(now)
        self.periods += 1
        for hook in self.period_hooks:
            try:
                hook(self, now)
            except Exception:
                self.hook_errors += 1
                log.exception("period hook failed")
        self.timing.set_work((time.perf_counter() - t_work) * 1000)  # hooks included: they share the loop

    async def _verify_step(self, until: float) -> None:
        """Two-phase close: get a sample taken from now on, at the latest by ``until`` (the next
        period), and step the logic on it at once."""
        asked = self.clock()
        sample = await self.hw.fresh_sample(asked, max(0.0, until - asked))
        if sample is None:
            return  # the next period steps on what there is; the logic's deadline aborts
        now = self.clock()
        try:
            self.period(now, 0.0, verify=True)
        except Exception:
            log.exception("verification step failed: forcing all contactors open")
            self._update_fail_safe(self.t_ms(now), ["runtime error"])
            self.hw.command(ALL_OPEN, np.zeros(len(self.meas.v_cell_v) if self.meas else 0, dtype=bool))
            self.commanded = ALL_OPEN

    def _update_fail_safe(self, t_ms: int, reasons: list[str]) -> bool:
        """Enter or leave the fail-safe; True if it was entered in this period."""
        if reasons and self.fail_safe_reason is None:
            self.fail_safe_reason = "; ".join(reasons)
            self.fail_safe_count += 1
            log.warning("FAIL-SAFE: contactors forced open: %s", self.fail_safe_reason)
            self._event("fail_safe", t_ms=t_ms, reason=self.fail_safe_reason)
            self._logic_opened = False
            self.rearm_pending = True
            try:
                self.logic.fail_safe(t_ms, self.fail_safe_reason)
            except Exception:
                log.exception("logic.fail_safe raised")
            return True
        if not reasons and self.fail_safe_reason is not None:
            log.info("fail-safe condition cleared (%s); waiting for the logic to re-arm", self.fail_safe_reason)
            self._event("fail_safe_cleared", t_ms=t_ms, reason=self.fail_safe_reason)
            self.fail_safe_reason = None
        return False

    def _observe_status(self, t_ms: int, st: NodeStatus) -> None:
        self.status = st
        now = (tuple(st.faults), st.failsafe)
        if now != self._last_faults:
            shown = [str(f) for f in st.faults] + ([f"failsafe:{st.failsafe}"] if st.failsafe else [])
            log.warning("faults: %s", shown) if shown else log.info("faults cleared")
            # the core's fault form, as is ({rule, level, index}), and the fail-safe reason
            self._event("faults", t_ms=t_ms, faults=[f.as_dict() for f in st.faults], failsafe=st.failsafe)
            self._last_faults = now
        if st.phase != self._last_phase:
            self._event("phase", t_ms=t_ms, phase=getattr(st.phase, "name", str(st.phase)))
            self._last_phase = st.phase

    def _peer_events(self, t_ms: int, now: float, events: list[dict[str, Any]]) -> None:
        """Log what the peer protocol noticed. A duplicate id is decided there, on the messages
        themselves: two incarnations (boot stamps) of one id both speaking. A restart (a new
        incarnation, the old one silent) is not a duplicate. One alarm per duplicate episode:
        the peer reports every message of the second holder, the log says it once, and again
        only after the id was clean for ``DUPLICATE_QUIET_S``."""
        for ev in events:
            kind = ev.get("kind")
            self.peer_event_counts[str(kind)] += 1
            if kind == "aborted":
                self.peer_event_counts[f"aborted:{ev.get('reason')}"] += 1
            if kind == "duplicate_id":
                node_id = int(ev.get("id", 0))
                last = self._duplicate_seen.get(node_id)
                self._duplicate_seen[node_id] = now
                self.duplicate_events += 1
                if last is None or now - last > DUPLICATE_QUIET_S:
                    self.duplicate_alarms += 1
                    own = " (this node's own id)" if node_id == self.node.id else ""
                    log.error("duplicate node id %d%s: two live nodes speak with incarnations %s; "
                              "the id is left out of close grants until one stops", node_id, own,
                              ev.get("incarnations"))
                    self._event("duplicate_id", t_ms=t_ms, id=node_id, incarnations=ev.get("incarnations"))
            elif kind == "peer_restarted":
                log.info("peer %s restarted (new incarnation %s)", ev.get("id"), ev.get("incarnation"))
                self._event("peer_restarted", t_ms=t_ms, id=ev.get("id"), incarnation=ev.get("incarnation"))

    def _send_messages(self, messages: list[bytes]) -> None:
        if self.transport is None:
            return
        for m in messages:
            try:
                self.transport.send(m)
            except (ValueError, RuntimeError, OSError) as exc:
                self.send_errors += 1
                log.warning("peer message not sent: %s", exc)

    def _periodic(self, now: float) -> None:
        if self.inverter is not None:
            try:
                soh = getattr(self.logic, "last", {}).get("soh_capacity")
                self.inverter.update(now, None if self.fail_safe_reason else self.status, self.meas,
                                     self._join_in_progress, soh)
            except Exception:  # the inverter link must never stop the control loop
                self.send_errors += 1
                log.exception("inverter link update failed")
        if self.transport is not None and self.telemetry is not None and \
                (now - self._last_telemetry) * 1000 >= self.node.telemetry_period_ms - 0.5:
            self._last_telemetry = now
            try:
                soh = (getattr(self.logic, "last", None) or {}).get("soh_capacity")
                self.transport.send_telemetry(self.telemetry.frames(self.status, self.meas, self.fail_safe_reason is not None,
                                                                    None if soh is None else 100.0 * soh))
            except (ValueError, OSError) as exc:
                self.send_errors += 1
                log.warning("telemetry not sent: %s", exc)
        if self.store is not None and (now - self._last_save) * 1000 >= self.node.state_save_ms:
            self._last_save = now
            blob = self.logic.export_state()
            boot = getattr(self.logic, "boot_now", None)
            if boot is not None:  # the core moved to a new boot (counter wrap, or a twin with our id)
                from mbms.node.persistence import save_boot

                save_boot(self.store.dir, boot())
            rx = self._receive_counters()
            if self.saver is not None:
                self.saver.submit(blob, rx)
            else:
                self.store.save(blob)
                if rx is not None:
                    from mbms.node.persistence import save_receive_counters

                    save_receive_counters(self.store.dir, rx)

    # -------------------------------------------------------------- the loop
    async def open_transport(self) -> None:
        """Open the peer transport (before discovery advertises it; ``run`` opens it otherwise).
        The machine's refusal (no such CAN interface) is an EnvironmentProblem, raised here."""
        if self.transport is not None and not self._transport_open:
            self.transport.on_message = self._on_message
            with opening(f"peer transport {self.transport.endpoint}"):
                await self.transport.start()
            self._transport_open = True

    async def run(self, stop: asyncio.Event | None = None, max_periods: int | None = None) -> None:
        stop = stop or asyncio.Event()
        # Opening the sensor link and the peer transport is where the machine shows up (no CAN
        # interface, port in use, permission denied): say which resource and stop (nothing was
        # commanded yet, so the contactors are still open).
        with opening(f"sensor link {self.hw.name}"):
            await self.hw.start()
        await self.open_transport()
        self._t0 = self.clock()
        if self.store is not None:
            self.saver = BackgroundSaver(self.store)
        self._event("start", t_ms=0, restored=self.restored)
        period = self.node.control_period_ms / 1000.0
        log.info("control loop running: period %d ms", self.node.control_period_ms)
        next_t = self.clock()
        try:
            while not stop.is_set() and (max_periods is None or self.periods < max_periods):
                delay = next_t - self.clock()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                        break
                    except asyncio.TimeoutError:
                        pass
                else:
                    await asyncio.sleep(0)  # let receive callbacks run even when behind
                now = self.clock()
                try:
                    self.period(now, max(0.0, now - next_t))
                except Exception:  # a runtime bug must still leave the pack open, and the loop alive
                    log.exception("control period failed: forcing all contactors open")
                    self._update_fail_safe(self.t_ms(now), ["runtime error"])
                    self.hw.command(ALL_OPEN, np.zeros(len(self.meas.v_cell_v) if self.meas else 0, dtype=bool))
                    self.commanded = ALL_OPEN
                    self._sample_request = False
                next_t += period
                if self._sample_request and not stop.is_set():
                    await self._verify_step(next_t)
                behind = self.clock() - next_t
                if behind > period:  # do not replay missed periods in a burst
                    skipped = int(behind // period)
                    self.timing.skipped_periods += skipped
                    next_t += skipped * period
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Open the contactors (nothing supervises the pack once the node is gone), save, close."""
        try:
            self.hw.command(ALL_OPEN, np.zeros(len(self.meas.v_cell_v) if self.meas else 0, dtype=bool))
        except Exception:
            log.exception("final open command failed")
        if self.saver is not None:
            self.saver.close()
            self.saver = None
        if self.store is not None:
            try:
                self.store.save(self.logic.export_state())
            except Exception:
                log.exception("final state save failed")
            try:
                rx = self._receive_counters()
                if rx is not None:
                    from mbms.node.persistence import save_receive_counters

                    save_receive_counters(self.store.dir, rx)
            except Exception:
                log.exception("final receive counters save failed")
            counters = getattr(self.logic, "counters", None)
            self._event("stop", t_ms=self.t_ms(), timing=self.timing.summary(),
                        peer=counters() if counters is not None else None,
                        transport=self.transport.stats.as_dict() if self.transport is not None else None)
            self.store.close()
        if self.transport is not None:
            self.transport.close()
        if self.inverter is not None:
            self.inverter.close()
        self.hw.close()
