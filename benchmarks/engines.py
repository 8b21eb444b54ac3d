"""The generation engines the decode benchmark compares; each runs in its own worker process with ``threads`` compute
threads.

Every engine answers ``run(messages, max_new) -> Sample``, measured alike:

* the clock starts before the chat template is applied and stops when the reply is complete;
* ``ttft_s`` is the moment the first non-empty piece of reply text reaches the engine's caller (for an engine that
  cannot stream, the whole reply: then it equals ``total_s`` and ``streams`` is False);
* ``tokens`` are the engine's own count of reply tokens, with the end-of-sequence token never counted (engines whose
  own count includes it get it subtracted, as their ``tokens_counted`` says);
* ``text`` is the reply text, compared across engines afterwards.

Importing this module loads no engine library; each class imports its own on construction.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Sample:
    ttft_s: float | None
    total_s: float
    tokens: int
    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None

    def record(self) -> dict[str, Any]:
        return asdict(self)


class _Piecewise:
    """Collects streamed pieces and notes when the first non-empty one arrives."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.parts: list[str] = []

    def add(self, piece: str | None) -> None:
        if piece:
            if self.first is None:
                self.first = time.perf_counter()
            self.parts.append(piece)

    def sample(self, tokens: int, finish_reason: str | None, prompt_tokens: int | None = None) -> Sample:
        end = time.perf_counter()
        ttft = None if self.first is None else self.first - self.start
        return Sample(ttft, end - self.start, tokens, "".join(self.parts), finish_reason, prompt_tokens)


class Engine:
    label = ""
    streams = True
    tokens_counted = ""

    def info(self) -> dict[str, Any]:
        return {"label": self.label, "streams": self.streams, "tokens_counted": self.tokens_counted,
                "threads": getattr(self, "threads_applied", None)}

    def peak_rss_mb(self) -> float:
        from chatpack.evaluation.memory import peak_rss_mb

        return peak_rss_mb()

    def close(self) -> None:
        pass


class OnnxPyfunc(Engine):
    """The logged onnxruntime-genai pyfunc, through mlflow.pyfunc.load_model and predict_stream."""

    label = "ONNX pyfunc (`mlflow.pyfunc`, predict_stream)"
    tokens_counted = "usage.completion_tokens (the pyfunc does not count EOS)"

    def __init__(self, spec: dict[str, Any]):
        import mlflow

        self.model = mlflow.pyfunc.load_model(spec["onnx_model_uri"], model_config={"threads": spec["threads"]})
        # MLflow drops load-time model_config keys the model was not logged with: say what actually applied.
        applied = (getattr(self.model, "model_config", None) or {}).get("threads")
        self.threads_applied = (f"onnxruntime intra-op {applied} (model_config threads)" if applied else
                                "onnxruntime-genai default (model_config threads dropped by MLflow: not in the "
                                "logged config)")

    def run(self, messages, max_new):
        clock, usage, finish = _Piecewise(), None, None
        for chunk in self.model.predict_stream({"messages": messages, "max_tokens": max_new}):
            choice = chunk["choices"][0]
            clock.add(choice["delta"].get("content"))
            finish = choice.get("finish_reason") or finish
            usage = chunk.get("usage") or usage
        return clock.sample(usage["completion_tokens"], finish, usage["prompt_tokens"])


class OnnxPyfuncAsLogged(OnnxPyfunc):
    """The same pyfunc loaded from the model as logged: its logged config has no ``threads`` key, so MLflow drops the
    load-time ``threads`` and onnxruntime-genai runs with its own default. Shows what that costs."""

    label = "ONNX pyfunc as logged (`threads` dropped by MLflow)"

    def __init__(self, spec: dict[str, Any]):
        super().__init__({**spec, "onnx_model_uri": spec["onnx_model_uri_as_logged"]})


class RawOrt(Engine):
    """The minimal onnxruntime-genai loop over the same ONNX folder: chat template, one generator, incremental
    detokenising of every token, stop at EOS (not counted) or at ``max_new``. What the pyfunc adds on top (request
    parsing, stop-sequence checks, chunk dicts, MLflow's predict_stream wrapper) is the difference measured."""

    label = "raw onnxruntime-genai loop"
    tokens_counted = "tokens generated before EOS (EOS not counted)"

    def __init__(self, spec: dict[str, Any]):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(spec["onnx_dir"])
        session = {"intra_op_num_threads": int(spec["threads"]), "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}}))
        self.model = og.Model(config)
        self.tok = og.Tokenizer(self.model)
        facts = json.loads((Path(spec["onnx_dir"]) / "genai_config.json").read_text())["model"]
        eos = facts.get("eos_token_id", [])
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.threads_applied = f"onnxruntime intra-op {spec['threads']} (genai config overlay)"

    def run(self, messages, max_new):
        og, clock = self.og, _Piecewise()
        ids = self.tok.encode(self.tok.apply_chat_template(json.dumps(messages), add_generation_prompt=True))
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + max_new, do_sample=False)
        gen = og.Generator(self.model, params)
        gen.append_tokens(ids)
        stream = self.tok.create_stream()
        n, finish = 0, "length"
        while not gen.is_done():
            gen.generate_next_token()
            token = int(gen.get_next_tokens()[0])
            if token in self.eos:
                finish = "stop"
                break
            n += 1
            clock.add(stream.decode(token))
            if n >= max_new:
                break
        return clock.sample(n, finish, len(ids))


class TransformersPyfunc(Engine):
    """The logged transformers llm/v1/chat flavour through mlflow.pyfunc.load_model (no streaming: the first text
    arrives with the whole reply)."""

    label = "transformers flavour (`mlflow.pyfunc`, fp32)"
    streams = False
    tokens_counted = "usage.completion_tokens minus 1 when the reply ended before max_tokens (the flavour counts EOS)"

    def __init__(self, spec: dict[str, Any]):
        import torch

        torch.set_num_threads(int(spec["threads"]))
        import mlflow

        self.model = mlflow.pyfunc.load_model(spec["transformers_model_uri"])
        self.threads_applied = f"torch {torch.get_num_threads()}"

    def run(self, messages, max_new):
        clock = _Piecewise()
        reply = self.model.predict({"messages": messages, "max_tokens": max_new})[0]
        clock.add(reply["choices"][0]["message"]["content"])
        usage = reply["usage"]
        tokens = usage["completion_tokens"]
        finish = "length" if tokens >= max_new else "stop"
        if finish == "stop":
            tokens -= 1  # the output tensor holds the EOS token it stopped on
        return clock.sample(tokens, finish, usage["prompt_tokens"])


class RawTransformers(Engine):
    """transformers ``generate`` on the fp32 folder, greedy, with a streamer that notes the first non-empty text."""

    label = "raw transformers `generate` (fp32)"
    tokens_counted = "new tokens in generate's output that are not EOS"

    def __init__(self, spec: dict[str, Any]):
        import torch

        torch.set_num_threads(int(spec["threads"]))
        import transformers

        self.tok = transformers.AutoTokenizer.from_pretrained(spec["hf_dir"])
        self.model = transformers.AutoModelForCausalLM.from_pretrained(spec["hf_dir"])
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.threads_applied = f"torch {torch.get_num_threads()}"

    def run(self, messages, max_new):
        from transformers.generation.streamers import BaseStreamer

        clock, tok, eos = _Piecewise(), self.tok, self.eos
        new: list[int] = []

        class FirstText(BaseStreamer):
            prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:  # generate hands the prompt over first
                    self.prompt_seen = True
                    return
                for token in value.reshape(-1).tolist():
                    if token in eos:
                        continue
                    new.append(token)
                    if clock.first is None:
                        text = tok.decode(new, skip_special_tokens=True)
                        if text:
                            clock.first = time.perf_counter()

            def end(self):
                pass

        enc = self.tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = self.model.generate(**enc, max_new_tokens=max_new, do_sample=False, streamer=FirstText())
        ids = [t for t in out[0][enc["input_ids"].shape[1]:].tolist() if t not in eos]
        clock.parts = [self.tok.decode(ids, skip_special_tokens=True)]
        finish = "length" if len(ids) >= max_new else "stop"
        return clock.sample(len(ids), finish, int(enc["input_ids"].shape[1]))


class LlamaCpp(Engine):
    """llama.cpp through ``llama-cpp-python`` (optional) on the GGUF ``spec["gguf"]`` (its quantisation type is
    ``spec["gguf_label"]``)."""

    tokens_counted = "the streamed reply text re-tokenised (llama-cpp-python streams no usage; EOS not in the text)"

    def __init__(self, spec: dict[str, Any]):
        from llama_cpp import Llama

        self.label = f"llama.cpp (`llama-cpp-python`, {spec.get('gguf_label') or 'GGUF'})"
        threads = int(spec["threads"])
        self.llm = Llama(model_path=spec["gguf"], n_ctx=4096, n_threads=threads, n_threads_batch=threads,
                         verbose=False)
        self.threads_applied = f"llama.cpp n_threads {threads}, n_threads_batch {threads}"

    def run(self, messages, max_new):
        clock, finish = _Piecewise(), None
        for chunk in self.llm.create_chat_completion(messages=messages, max_tokens=max_new, temperature=0.0,
                                                     stream=True):
            choice = chunk["choices"][0]
            clock.add(choice["delta"].get("content"))
            finish = choice.get("finish_reason") or finish
        text = "".join(clock.parts)
        tokens = len(self.llm.tokenize(text.encode(), add_bos=False, special=False)) if text else 0
        return clock.sample(tokens, finish)


class LlamaServer(Engine):
    """llama.cpp's own server (``llama-server``, one slot) on the GGUF ``spec["gguf"]``, driven by the benchmarks'
    HTTP client (streamed, greedy, ``cache_prompt: false`` so every prompt is prefilled from scratch like the other
    engines); each request may take ``spec["timeout_s"]``."""

    tokens_counted = "usage.completion_tokens minus 1 when finish_reason is stop (llama-server counts EOS)"

    def __init__(self, spec: dict[str, Any]):
        import subprocess

        from benchmarks.common import free_port, wait_for_http

        self.label = f"llama.cpp `llama-server` ({spec.get('gguf_label') or 'GGUF'}, HTTP, 1 slot)"
        self.timeout_s = float(spec.get("timeout_s") or 120.0)
        threads = int(spec["threads"])
        port = free_port()
        self.cmd = [spec["llama_server"], "-m", spec["gguf"], "-t", str(threads), "-tb", str(threads), "-np", "1",
                    "-c", "4096", "--host", "127.0.0.1", "--port", str(port)]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/health", timeout=max(120.0, self.timeout_s), proc=self.proc)
        except BaseException:
            self.close()
            raise
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self.threads_applied = f"llama-server -t {threads} -tb {threads}"

    def run(self, messages, max_new):
        from benchmarks.client import chat

        reply = chat(self.url, {"messages": messages, "max_tokens": max_new, "temperature": 0.0, "stream": True,
                                "stream_options": {"include_usage": True}, "cache_prompt": False},
                     timeout=self.timeout_s)
        if not reply.ok:
            raise RuntimeError(f"llama-server: {reply.failure}: {reply.detail}")
        tokens = reply.completion_tokens - (1 if reply.finish_reason == "stop" else 0)
        return Sample(reply.ttft_s, reply.total_s, tokens, reply.text, reply.finish_reason, reply.prompt_tokens)

    def peak_rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def close(self) -> None:
        from benchmarks.common import stop_process

        stop_process(self.proc)


ENGINES: dict[str, type[Engine]] = {
    "onnx_pyfunc": OnnxPyfunc, "onnx_pyfunc_as_logged": OnnxPyfuncAsLogged, "raw_ort": RawOrt,
    "transformers_pyfunc": TransformersPyfunc, "raw_transformers": RawTransformers, "llama_cpp": LlamaCpp,
    "llama_server": LlamaServer}
