"""Batch inference on Spark: score a prompt set on ``local[N]``, a standalone cluster or any cluster's own session.

Where the model is loaded: **on the executors, from the tracking server.** Each Spark Python worker calls
``mlflow.pyfunc.load_model(model_uri)`` itself (once per worker process, cached) against the driver's tracking URI;
the driver never downloads the model. ``mlflow.pyfunc.spark_udf(..., env_manager="local")``, used here before, downloads
the whole model on the driver and ships it to the executors through Spark's file distribution (``addFile``), so the
driver needs the disk and bandwidth for every model it scores. Measured on a standalone cluster (docs/deployment.md,
"Spark batch inference"): the executor-side load gives the same replies and no driver download; the tracking
server's access log shows one download of the model's files per Python worker.

What the executors need: the tracking URI reachable from them (an ``http(s)://`` tracking server, best with proxied
artifacts, ``mlflow server --serve-artifacts``; a ``sqlite:`` or ``file:`` store only works when the workers share
the driver's disk), MLflow's tracking credentials (forwarded as ``spark.executorEnv.*`` when this module starts the
session), and the project's pins in their Python (``PYSPARK_PYTHON``). They do not need ``chatpack``: the function that
runs on them imports only MLflow and pandas, and the model brings its own code.

Column types: MLflow maps a ``spark_udf``'s *separate* argument columns to the signature's columns by position and
fills every optional column a row lacks with NaN, which breaks typed chat fields (an int becomes float64, a missing
array becomes NaN). The executor function does what the struct-column trick did for ``spark_udf``: it hands the model
a pandas DataFrame with exactly the named, correctly typed columns we set (``messages``: lists of {role, content};
``max_tokens``: int64), and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chatpack.protocol.chat_request import parse_request

logger = logging.getLogger(__name__)

OUTPUT_SCHEMA = ("id string, reply string, finish_reason string, prompt_tokens long, completion_tokens long, "
                 "worker string")
# What the executors need to reach the tracking server like the driver does (forwarded when set on the driver).
EXECUTOR_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH")


def request_type():
    from pyspark.sql.types import ArrayType, StringType, StructField, StructType

    message = StructType([StructField("role", StringType()), StructField("content", StringType())])
    return StructType([StructField("id", StringType()), StructField("messages", ArrayType(message))])


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """JSONL rows with ``messages`` (and optionally ``id``); the eval set format works as is."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            messages = parse_request({"messages": obj.get("messages")}).messages
        except ValueError as exc:  # bad JSON, or a RequestError (a ValueError too) naming the field
            raise ValueError(f"input_path: {path}:{number}: {exc}") from None
        rows.append({"id": str(obj.get("id", number)), "messages": messages})
    if not rows:
        raise ValueError(f"input_path: {path} has no prompts")
    return rows


def executor_env() -> dict[str, str]:
    """``spark.executorEnv.*`` values: the driver's tracking URI and whichever MLflow credentials it has."""
    import mlflow

    env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    env.update({key: os.environ[key] for key in EXECUTOR_ENV if os.environ.get(key)})
    return env


def spark_session(master: str, app_name: str = "chatpack-batch"):
    """A Spark session. Local masters use this interpreter for the Python workers; for a cluster, set
    ``PYSPARK_PYTHON`` (or ``spark.pyspark.python``) to the workers' Python with the project's pins. The executors get
    the tracking URI and MLflow credentials through ``spark.executorEnv.*`` (a session that already exists, such as a
    cluster's own, keeps its settings: give its executors those variables yourself)."""
    from pyspark.sql import SparkSession

    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name).config("spark.ui.enabled", "false")
    for key, value in executor_env().items():
        builder = builder.config(f"spark.executorEnv.{key}", value)
    if master:
        builder = builder.master(master)
    return builder.getOrCreate()


def pinned_model_uri(model_uri: str) -> str:
    """The URI every executor should load: ``models:/<name>@<alias>`` and ``models:/<name>/latest`` resolved once here
    to ``models:/<name>/<version>`` (each executor resolves on its own, so an alias that moves during the job would
    otherwise split it between versions); a local path made absolute (executors run in their own folders)."""
    from mlflow.tracking import MlflowClient

    if model_uri.startswith("models:/"):
        name, alias = model_uri[len("models:/"):], None
        if "@" in name:
            name, alias = name.split("@", 1)
            return f"models:/{name}/{MlflowClient().get_model_version_by_alias(name, alias).version}"
        if name.endswith("/latest"):
            name = name[: -len("/latest")]
            versions = MlflowClient().search_model_versions(f"name = '{name}'")
            if versions:
                return f"models:/{name}/{max(int(v.version) for v in versions)}"
        return model_uri
    if "://" not in model_uri and ":/" not in model_uri and Path(model_uri).exists():
        return str(Path(model_uri).resolve())
    return model_uri


def executor_scorer(model_uri: str, tracking_uri: str, registry_uri: str, max_tokens: int
                    ) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The ``mapInPandas`` function: (id, messages) batches in, :data:`OUTPUT_SCHEMA` batches out.

    It runs on the executors and is pickled by value (a closure), so it may use only what the workers have: MLflow,
    pandas and the standard library, no ``chatpack`` module. The model is loaded from the tracking server on first
    use and kept in a registry module in ``sys.modules``, so a Python worker that Spark reuses for later tasks loads it
    once.
    """

    def score(batches):
        import os
        import socket
        import sys
        import types

        import mlflow
        import pandas as pd

        registry = sys.modules.setdefault("_chatpack_spark_models", types.ModuleType("_chatpack_spark_models"))
        models = registry.__dict__.setdefault("models", {})
        key = (tracking_uri, registry_uri, model_uri)
        if key not in models:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(registry_uri)
            models[key] = mlflow.pyfunc.load_model(model_uri)
        model = models[key]
        worker = f"{socket.gethostname()}:{os.getpid()}"
        for frame in batches:
            if not len(frame):
                continue
            messages = [[{"role": m["role"], "content": m["content"]} for m in row] for row in frame["messages"]]
            request = pd.DataFrame({"messages": messages,
                                    "max_tokens": pd.Series([max_tokens] * len(messages), dtype="int64")})
            completions = model.predict(request)
            yield pd.DataFrame({
                "id": frame["id"].tolist(),
                "reply": [c["choices"][0]["message"]["content"] for c in completions],
                "finish_reason": [c["choices"][0]["finish_reason"] for c in completions],
                "prompt_tokens": pd.Series([c["usage"]["prompt_tokens"] for c in completions], dtype="int64"),
                "completion_tokens": pd.Series([c["usage"]["completion_tokens"] for c in completions], dtype="int64"),
                "worker": [worker] * len(completions),
            })

    return score


def score_on_spark(spark, model_uri: str, prompts: list[dict[str, Any]], max_tokens: int, partitions: int):
    """A DataFrame of :data:`OUTPUT_SCHEMA` (``worker``: host:pid of the Python worker that scored the row), computed
    by ``partitions`` tasks that each score with a model their Python worker loaded from the tracking server."""
    import mlflow

    frame = spark.createDataFrame([(p["id"], [(m["role"], m["content"]) for m in p["messages"]]) for p in prompts],
                                  request_type()).repartition(partitions)
    score = executor_scorer(pinned_model_uri(model_uri), mlflow.get_tracking_uri(), mlflow.get_registry_uri(),
                            max_tokens)
    return frame.mapInPandas(score, OUTPUT_SCHEMA)


def score_in_process(model_uri: str, prompts: list[dict[str, Any]], max_tokens: int) -> dict[str, str]:
    """The same prompts through ``mlflow.pyfunc.load_model`` in this process: id -> reply."""
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    return {p["id"]: model.predict({"messages": p["messages"], "max_tokens": max_tokens})[0]["choices"][0]
            ["message"]["content"] for p in prompts}


def run_batch(model_uri: str, input_path: str, output_dir: Path, master: str, max_tokens: int,
              partitions: int) -> dict[str, float]:
    """Score ``input_path`` on Spark, write the replies as Parquet to ``output_dir`` (a local folder on the driver);
    return throughput figures.

    The replies are collected on the driver and written there, so the driver can log them as an artifact from any
    cluster: a Spark ``write.parquet`` to a driver-local path would put the parts on the executors' disks (and on
    Databricks a bare path means DBFS). A session this call starts (none was active and ``master`` is set) is stopped
    at the end, so the next call may name another master; an active session (a notebook's, a cluster's own) is used
    and left running."""
    from pyspark.sql import SparkSession

    prompts = read_prompts(input_path)
    started = bool(master) and SparkSession.getActiveSession() is None
    spark = spark_session(master)
    try:
        start = time.perf_counter()
        replies = score_on_spark(spark, model_uri, prompts, max_tokens, partitions).toPandas()
        output_dir.mkdir(parents=True, exist_ok=True)
        replies.to_parquet(output_dir / "part-00000.parquet", index=False)
        seconds = time.perf_counter() - start
    finally:
        if started:
            spark.stop()
    count = len(replies)
    if count != len(prompts) or set(replies["id"]) != {p["id"] for p in prompts}:
        raise RuntimeError(f"Spark scored {replies['id'].nunique()} of {len(prompts)} prompts")
    return {"prompts": float(count), "spark_seconds": seconds, "spark_prompts_per_s": count / seconds,
            "spark_model_copies": float(replies["worker"].nunique())}
