"""Entry point ``serve``: an OpenAI-compatible endpoint (``/v1/chat/completions`` with token streaming) over a logged
chat model, beside the stock ``mlflow models serve``.

Inputs (MLproject params, same names as the flags):
  model_uri   any MLflow chat model: ``models:/<name>@champion``, ``models:/m-...``, ``runs:/<run>/<name>``
  host, port  where to listen (default 127.0.0.1:8080; use 0.0.0.0 inside a container)
  queue_size  requests admitted at once (running + waiting); more get HTTP 429
  threads     compute threads for the model (ONNX: onnxruntime intra-op threads; transformers: torch threads);
              0 (default) = this machine's physical cores; the count used is logged and reported by ``/health``
  parallel    ONNX: the most requests decoding together (KV-cache rows); 0 = the model's logged value (8)
  kv_cache_mb ONNX: the KV rows' memory budget in MB; 0 = the model's logged value (0 for models logged now: half
              the memory available at load); ``/health`` states the budget, how it was chosen and what is held
  speculate   ONNX: the longest prompt-lookup draft a lone greedy request verifies per pass; -1 = the model's
              logged value (0: off)
  compile_timeout_s ONNX: the longest a request's constraint (response_format, tools) may take to compile before
              it is refused with 400 naming the field; 0 = the model's logged value (5)
  reuse_decoded ONNX: true = a conversation's next turn reuses the previous reply's keys/values as decoded
              (llama.cpp's reuse: faster when the next turn comes at once, but its reply may differ from a cold
              run's); false (default) = reuse only what prompt passes computed (exact; an idle server recomputes a
              finished reply that way within milliseconds)
  experiment  MLflow experiment that receives a trace per chat request (default ``chatpack-serve``)
  tracing     true (default) / false: record those traces at all
  trace_text  true (default) / false: record prompt and reply text in them (false: roles, options and counts only)
  api_key_file a file of API keys, one a line (blank lines and ``#`` comments ignored); empty (default) = none
  metrics_auth true / false (default): require a key on ``GET /metrics`` too (``/health`` is always open)

API keys (flag only, not an MLproject param, which would be logged with the run): ``--api_key KEY``, or better the
environment variable ``CHATPACK_API_KEY`` (a flag shows in the process list). Keys from the variable, the flag and
the file are all accepted. With at least one key every ``/v1/*`` route needs ``Authorization: Bearer <key>`` (or
``x-api-key: <key>``) and answers 401 without it; with none the endpoint is open (a warning is logged when ``host``
is not a loopback address).

Outputs: a trace per chat request in ``experiment`` of the tracking store (``MLFLOW_TRACKING_URI``), linked to the
served LoggedModel; Prometheus metrics at ``GET /metrics``. Serves until interrupted. See
chatpack/serving/app.py for the routes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from chatpack.serving.app import API_KEY_ENV, serve
from chatpack.serving.cpus import physical_cores
from chatpack.serving.observability.tracing import DEFAULT_EXPERIMENT, TraceSettings
from chatpack.serving.served_model import DEFAULT_QUEUE_SIZE
from steps import common


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_uri", required=True, help="MLflow model URI, e.g. models:/my-chat@champion.")
    p.add_argument("--host", default="127.0.0.1", help="Interface to bind (0.0.0.0 to listen on all).")
    p.add_argument("--port", type=int, default=8080, help="TCP port.")
    p.add_argument("--queue_size", type=int, default=DEFAULT_QUEUE_SIZE,
                   help="Max requests admitted (running + waiting); more get HTTP 429.")
    p.add_argument("--threads", type=int, default=0,
                   help="Compute threads for the model (onnxruntime intra-op / torch); 0 = the physical cores.")
    p.add_argument("--parallel", type=int, default=0,
                   help="ONNX: most requests decoding together (KV rows); 0 = the model's logged value.")
    p.add_argument("--kv_cache_mb", type=int, default=0,
                   help="ONNX: memory budget of the KV rows in MB; 0 = the model's logged value.")
    p.add_argument("--speculate", type=int, default=-1,
                   help="ONNX: longest prompt-lookup draft for a lone greedy request (0: off); -1 = the model's value.")
    p.add_argument("--compile_timeout_s", type=float, default=0.0,
                   help="ONNX: seconds a constraint may take to compile (else 400); 0 = the model's logged value.")
    p.add_argument("--reuse_decoded", type=common.str2bool, default=False,
                   help="ONNX: true/false (default false): let the next turn reuse a reply's keys/values as decoded "
                        "(faster when it comes at once, but its reply may differ from a cold run's).")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                   help="MLflow experiment that receives one trace per chat request (created if missing).")
    p.add_argument("--tracing", type=common.str2bool, default=True, help="Trace each chat request in MLflow.")
    p.add_argument("--trace_text", type=common.str2bool, default=True,
                   help="Record prompt and reply text in traces (false: roles, options and token counts only).")
    p.add_argument("--api_key", "--api-key", default="",
                   help=f"An API key clients must send on /v1/* ('Authorization: Bearer KEY' or 'x-api-key: KEY'); "
                        f"prefer the {API_KEY_ENV} environment variable (a flag shows in the process list). "
                        f"Empty = none.")
    p.add_argument("--api_key_file", default="",
                   help="A file of API keys, one a line (blank lines and # comments ignored), accepted together with "
                        f"--api_key and {API_KEY_ENV}. Empty = none.")
    p.add_argument("--metrics_auth", type=common.str2bool, default=False,
                   help="Require an API key on GET /metrics too (default false: open for scrapers; /health is "
                        "always open).")
    p.add_argument("--exit_on_load_error", type=common.str2bool, default=False,
                   help="Exit with status 1 when the model fails to load (default false: stay up, /health answers "
                        "503 with the error). For orchestrators that restart failed containers: a bad model URI shows "
                        "at once as a crash-looping pod, not as a startup probe failing for its whole budget.")
    common.add_verbose(p)
    return p.parse_args(argv)


_KEY = re.compile(r"[\x21-\x7e]+")  # what a key may be: visible ASCII, no spaces (it travels in an HTTP header)


def _checked_key(key: str, where: str) -> str:
    if not _KEY.fullmatch(key):
        raise ValueError(f"{where}: an API key must be printable ASCII without spaces")  # never echo the key
    return key


def read_key_file(path: str) -> list[str]:
    """The keys in ``path``: one a line, blank lines and ``#`` comments ignored; ValueError naming ``api_key_file``."""
    file = Path(path).expanduser()
    if not file.exists():
        raise ValueError(f"api_key_file: {path} does not exist")
    if not file.is_file():
        raise ValueError(f"api_key_file: {path} is not a file")
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise ValueError(f"api_key_file: cannot read {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError(f"api_key_file: {path} is not UTF-8 text") from None
    keys = [_checked_key(line.strip(), f"api_key_file: {path} line {number}")
            for number, line in enumerate(lines, 1) if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ValueError(f"api_key_file: {path} holds no keys (one a line; blank lines and # comments are ignored)")
    return keys


def api_keys(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Every configured key, in order, without repeats: ``CHATPACK_API_KEY``, ``--api_key``, ``--api_key_file``."""
    keys = []
    if API_KEY_ENV in environ and not environ[API_KEY_ENV].strip():
        # set but empty (a secret that expanded to nothing): refuse rather than serve with no authentication
        raise ValueError(f"{API_KEY_ENV}: set but empty; give it a key, or unset it to serve without authentication")
    for where, value in ((API_KEY_ENV, environ.get(API_KEY_ENV, "")), ("api_key", args.api_key)):
        if value.strip():
            keys.append(_checked_key(value.strip(), where))
    if args.api_key_file.strip():
        keys += read_key_file(args.api_key_file.strip())
    return list(dict.fromkeys(keys))


def _run(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise ValueError(f"port: must be 1-65535, got {args.port}")
    if args.threads < 0:
        raise ValueError(f"threads: must be >= 0 (0 = the physical cores), got {args.threads}")
    for flag, least in (("parallel", 0), ("kv_cache_mb", 0), ("speculate", -1), ("compile_timeout_s", 0)):
        if getattr(args, flag) < least:
            raise ValueError(f"{flag}: must be >= {least}, got {getattr(args, flag)}")
    if not args.experiment.strip():
        raise ValueError("experiment: must not be empty (pass --tracing false to record no traces)")
    keys = api_keys(args)
    if args.metrics_auth and not keys:
        raise ValueError(f"metrics_auth: true needs an API key: set {API_KEY_ENV}, --api_key or --api_key_file")
    tracing = TraceSettings(args.tracing, args.experiment, args.trace_text)
    engine = {"parallel": args.parallel or None, "kv_cache_mb": args.kv_cache_mb or None,
              "speculate": None if args.speculate < 0 else args.speculate,
              "compile_timeout_s": args.compile_timeout_s or None, "reuse_decoded": args.reuse_decoded or None}
    serve(args.model_uri, args.host, args.port, args.queue_size, args.threads or physical_cores(), tracing, engine,
          api_keys=keys, metrics_auth=args.metrics_auth, exit_on_load_error=args.exit_on_load_error)


def main(argv: list[str] | None = None) -> int:
    return common.run_main(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
