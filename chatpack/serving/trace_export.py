"""The trace exporter: a separate, low-priority process that writes ``serve``'s traces to the tracking store.

Why a process: the onnxruntime-genai bindings hold the GIL while they generate, and MLflow's trace export is Python
work (measured on a sqlite store: 20-30 ms of CPU per trace, about 100 SQL statements). In the server's own process
that work waits for the GIL and then makes generation wait for it (a busy Python thread slowed generation by ~70%;
traced requests took ~9% longer). In its own process, scheduled ``SCHED_IDLE`` (only CPU time nobody else wants), it
costs the server one pickled record per request, and the export runs when generation leaves a core idle.

The server side, :class:`TraceExporter`, turns each finished request into a :class:`~chatpack.serving.tracing.
TraceRecord` and puts it on a bounded queue (full: the trace is dropped and counted, never waited for). The process
(:func:`export_loop`) resolves the experiment (created if missing), records each trace with
:func:`~chatpack.serving.tracing.record_trace` and, when the server shuts down, flushes MLflow's export queue.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
from typing import Any

from chatpack.serving.request_context import RequestContext
from chatpack.serving.tracing import TraceRecord, TraceSettings, experiment_id, record_trace, use_export_defaults

logger = logging.getLogger(__name__)

MAX_PENDING = 10_000  # records waiting for the exporter; more are dropped (and counted) rather than piling up
STOP = None  # the record that tells the exporter to flush and exit


def background() -> None:
    """Run this process only on CPU time nobody else wants (``SCHED_IDLE``; ``nice`` 19 where that is refused)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)


def export_loop(records: Any, settings: TraceSettings, tracking_uri: str) -> None:
    """The exporter process: record every trace that arrives until :data:`STOP` (or until the server is gone), then
    flush and return. Ctrl-C and SIGTERM are for the server, which stops this process once it has handed over the
    last trace; a signal to the whole process group would otherwise lose the traces still queued."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    background()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    use_export_defaults()
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
        self._process = context.Process(target=export_loop, name="chatpack-trace-export", daemon=True,
                                        args=(self._records, settings, _tracking_uri()))

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
