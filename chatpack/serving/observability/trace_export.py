"""The trace exporter: a separate, low-priority process that writes ``serve``'s traces to the tracking store.

Why a process: the onnxruntime-genai bindings hold the GIL while they generate, and MLflow's trace export is Python work
(measured on a sqlite store: 20-30 ms of CPU per trace, about 100 SQL statements). In the server's own process that work
waits for the GIL and then makes generation wait for it (a busy Python thread slowed generation by ~70%; traced requests
took ~9% longer). In its own process, scheduled ``SCHED_IDLE`` (only CPU time nobody else wants), it costs the server
one pickled record per request, and the export runs when generation leaves a core idle.

Idle CPU is not enough on its own: measured on 2 cores, a ``SCHED_IDLE`` exporter writing each trace as it came still
added ~12% to request latency (30 ms of CPU per trace, taken in the gaps between decode steps, from caches and memory
bandwidth the model needs). So the exporter also waits until the server is quiet: :class:`Activity` (shared memory, two
numbers) counts the requests in flight and when the last one started or ended, and a trace is written only once none has
been in flight for :data:`QUIET_SECONDS`; traces wait at most :data:`MAX_DEFER_SECONDS`, and are written regardless once
:data:`FORCE_BACKLOG` are waiting (a server busy without pause still gets its traces, at the cost measured above).
MLflow's own asynchronous export is off in that process, so a trace is written when the exporter says, not later on a
thread of MLflow's.

The server side, :class:`TraceExporter`, turns each finished request into a
:class:`~chatpack.serving.observability.tracing. TraceRecord` and puts it on a bounded queue (full: the trace is dropped
and counted, never waited for). The process (:func:`export_loop`) resolves the experiment (created if missing), records
each trace with :func:`~chatpack.serving.observability.tracing.record_trace` when the server is quiet and, when the
server shuts down, writes what is left.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import time
from typing import Any

from chatpack.serving.observability.request_context import RequestContext
from chatpack.serving.observability.tracing import (
    TraceRecord,
    TraceSettings,
    experiment_id,
    record_trace,
    use_export_defaults,
)

logger = logging.getLogger(__name__)

MAX_PENDING = 10_000  # records waiting for the exporter; more are dropped (and counted) rather than piling up
STOP = None  # the record that tells the exporter to flush and exit
QUIET_SECONDS = 0.2  # no request in flight for this long: the server is quiet, traces may be written
MAX_DEFER_SECONDS = 60.0  # a trace waits for a quiet server at most this long
FORCE_BACKLOG = 1000  # this many traces waiting: write without waiting for quiet


class Activity:
    """Requests in flight in the server and when that last changed (``time.monotonic``, which all processes share),
    in shared memory: the server writes it from its event loop, the exporter reads it."""

    def __init__(self, context: Any):
        self.in_flight = context.RawValue("i", 0)
        self.changed = context.RawValue("d", time.monotonic())

    def begin(self) -> None:
        self.in_flight.value += 1
        self.changed.value = time.monotonic()

    def end(self) -> None:
        self.in_flight.value -= 1
        self.changed.value = time.monotonic()

    def quiet(self) -> bool:
        return self.in_flight.value <= 0 and time.monotonic() - self.changed.value >= QUIET_SECONDS


def wait_for_quiet(activity: Activity, records: Any) -> None:
    """Return once the server is quiet, the backlog is long, or :data:`MAX_DEFER_SECONDS` have passed."""
    deadline = time.monotonic() + MAX_DEFER_SECONDS
    while not activity.quiet() and time.monotonic() < deadline:
        with contextlib.suppress(NotImplementedError):
            if records.qsize() >= FORCE_BACKLOG:
                return
        time.sleep(0.02)


def background() -> None:
    """Run this process only on CPU time nobody else wants (``SCHED_IDLE``; ``nice`` 19 where that is refused)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)


def export_loop(records: Any, settings: TraceSettings, tracking_uri: str, activity: Activity) -> None:
    """The exporter process: record every trace that arrives until :data:`STOP` (or until the server is gone), then
    flush and return. Ctrl-C and SIGTERM are for the server, which stops this process once it has handed over the
    last trace; a signal to the whole process group would otherwise lose the traces still queued."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    background()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    use_export_defaults()
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # written when this loop says, see the module docstring
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        experiment = experiment_id(settings.experiment)
        logger.info("Tracing chat requests to experiment %r (id %s)", settings.experiment, experiment)
    except Exception:
        logger.exception("Tracing off: experiment %r not reachable in the tracking store", settings.experiment)
        experiment = None
    while True:
        try:
            record = records.get(timeout=5)
        except queue.Empty:
            if os.getppid() != parent:  # the server died without saying so
                break
            continue
        if record is STOP:
            break
        wait_for_quiet(activity, records)
        if experiment is not None:
            try:
                record_trace(record, settings, experiment)
            except Exception:
                logger.warning("Could not record a trace", exc_info=True)
    mlflow.flush_trace_async_logging(terminate=True)


class TraceExporter:
    """The server's handle on the exporter process (see the module docstring); ``served`` is the ServedModel."""

    def __init__(self, settings: TraceSettings, served: Any):
        self.settings, self.served = settings, served
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of the model, locks or threads
        self._records = context.Queue(MAX_PENDING)
        self.activity = Activity(context)
        self._process = context.Process(target=export_loop, name="chatpack-trace-export", daemon=True,
                                        args=(self._records, settings, _tracking_uri(), self.activity))

    def start(self) -> None:
        self._process.start()

    def submit(self, context: RequestContext) -> bool:
        """Hand the finished request to the exporter; False if it was dropped (backlog full)."""
        try:
            self._records.put_nowait(TraceRecord.of(context, self.served.model_id, self.served.model_uri))
        except queue.Full:
            return False
        return True

    def close(self, timeout: float = 60.0) -> None:
        """Let the exporter write what is queued and flush MLflow's export (at server shutdown), within ``timeout``."""
        if self._process.pid is None:
            return
        with contextlib.suppress(ValueError, OSError):
            self._records.put(STOP, timeout=timeout)
        self._process.join(timeout)
        if self._process.is_alive():
            logger.warning("trace exporter did not finish within %.0f s; stopping it", timeout)
            self._process.terminate()
            self._process.join(5)
        self._records.close()
        self._records.join_thread()


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()
