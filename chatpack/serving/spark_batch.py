"""Batch inference on Spark: score a prompt set with ``mlflow.pyfunc.spark_udf``, locally or on any cluster.

MLflow maps a UDF's *separate* argument columns to the signature's columns by position and fills every optional
column a row lacks with NaN, which breaks typed chat fields. Passing one ``struct`` of exactly the fields we set
hands the model a DataFrame with those named, correctly typed columns, and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from chatpack.protocol.chat_request import parse_request

logger = logging.getLogger(__name__)


def spark_types():
    from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType

    message = StructType([StructField("role", StringType()), StructField("content", StringType())])
    request = StructType([StructField("id", StringType()), StructField("messages", ArrayType(message))])
    completion = StructType([
        StructField("id", StringType()), StructField("object", StringType()), StructField("created", LongType()),
        StructField("model", StringType()),
        StructField("choices", ArrayType(StructType([StructField("index", LongType()),
                                                     StructField("message", message),
                                                     StructField("finish_reason", StringType())]))),
        StructField("usage", StructType([StructField("prompt_tokens", LongType()),
                                         StructField("completion_tokens", LongType()),
                                         StructField("total_tokens", LongType())])),
    ])
    return request, completion


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


def spark_session(master: str, app_name: str = "chatpack-batch"):
    """A Spark session; local masters use this interpreter for the Python workers."""
    from pyspark.sql import SparkSession

    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name).config("spark.ui.enabled", "false")
    if master:
        builder = builder.master(master)
    return builder.getOrCreate()


def score_on_spark(spark, model_uri: str, prompts: list[dict[str, Any]], max_tokens: int, partitions: int):
    """A DataFrame of (id, reply, finish_reason, prompt_tokens, completion_tokens), computed by a spark_udf."""
    import mlflow
    from pyspark.sql import functions as F

    request_type, completion_type = spark_types()
    frame = spark.createDataFrame([(p["id"], [(m["role"], m["content"]) for m in p["messages"]]) for p in prompts],
                                  request_type).repartition(partitions)
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, env_manager="local", result_type=completion_type)
    scored = frame.withColumn("max_tokens", F.lit(max_tokens).cast("long")) \
                  .withColumn("completion", udf(F.struct("messages", "max_tokens")))
    return scored.select(
        "id",
        F.col("completion.choices")[0]["message"]["content"].alias("reply"),
        F.col("completion.choices")[0]["finish_reason"].alias("finish_reason"),
        F.col("completion.usage.prompt_tokens").alias("prompt_tokens"),
        F.col("completion.usage.completion_tokens").alias("completion_tokens"),
    )


def score_in_process(model_uri: str, prompts: list[dict[str, Any]], max_tokens: int) -> dict[str, str]:
    """The same prompts through ``mlflow.pyfunc.load_model`` in this process: id -> reply."""
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    return {p["id"]: model.predict({"messages": p["messages"], "max_tokens": max_tokens})[0]["choices"][0]
            ["message"]["content"] for p in prompts}


def run_batch(model_uri: str, input_path: str, output_dir: Path, master: str, max_tokens: int,
              partitions: int) -> dict[str, float]:
    """Score ``input_path`` on Spark, write Parquet to ``output_dir``; return throughput figures."""
    prompts = read_prompts(input_path)
    spark = spark_session(master)
    start = time.perf_counter()
    scored = score_on_spark(spark, model_uri, prompts, max_tokens, partitions)
    scored.write.mode("overwrite").parquet(str(output_dir))  # Spark commits via _temporary, then renames
    seconds = time.perf_counter() - start
    count = spark.read.parquet(str(output_dir)).count()
    if count != len(prompts):
        raise RuntimeError(f"Spark scored {count} of {len(prompts)} prompts")
    return {"prompts": float(count), "spark_seconds": seconds, "spark_prompts_per_s": count / seconds}
