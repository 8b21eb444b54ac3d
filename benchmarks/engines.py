"""The generation engines the decode benchmark compares; each runs in its own worker process.

Every engine answers ``run(messages, max_new) -> (ttft_s, total_s, new_tokens, text)``; ``ttft_s`` is None where the
engine cannot report a first token separately (the transformers flavour has no streaming).
"""

from __future__ import annotations

import json
import time
from typing import Any


class OnnxPyfunc:
    """The logged onnxruntime-genai pyfunc, through mlflow.pyfunc.load_model and predict_stream."""

    def __init__(self, spec: dict[str, Any]):
        import mlflow

        self.model = mlflow.pyfunc.load_model(spec["onnx_model_uri"])

    def run(self, messages, max_new):
        start, first, usage, parts = time.perf_counter(), None, None, []
        for chunk in self.model.predict_stream({"messages": messages, "max_tokens": max_new}):
            piece = chunk["choices"][0]["delta"].get("content")
            if piece and first is None:
                first = time.perf_counter()
            parts.append(piece or "")
            usage = chunk.get("usage", usage)
        return first - start, time.perf_counter() - start, usage["completion_tokens"], "".join(parts)


class RawOrt:
    """A plain onnxruntime-genai loop over the same ONNX folder: the ceiling the pyfunc is measured against."""

    def __init__(self, spec: dict[str, Any]):
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(spec["onnx_dir"])
        self.tok = og.Tokenizer(self.model)

    def run(self, messages, max_new):
        og, start = self.og, time.perf_counter()
        ids = self.tok.encode(self.tok.apply_chat_template(json.dumps(messages), add_generation_prompt=True))
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + max_new, do_sample=False)
        gen = og.Generator(self.model, params)
        gen.append_tokens(ids)
        first, n = None, 0
        while not gen.is_done():
            gen.generate_next_token()
            n += 1
            if first is None:
                first = time.perf_counter()
        text = self.tok.decode(gen.get_sequence(0)[len(ids):])
        return first - start, time.perf_counter() - start, gen.token_count() - len(ids), text


class TransformersPyfunc:
    """The logged transformers llm/v1/chat flavour through mlflow.pyfunc.load_model (no streaming: no TTFT)."""

    def __init__(self, spec: dict[str, Any]):
        import mlflow

        self.model = mlflow.pyfunc.load_model(spec["transformers_model_uri"])

    def run(self, messages, max_new):
        start = time.perf_counter()
        reply = self.model.predict({"messages": messages, "max_tokens": max_new})[0]
        return None, time.perf_counter() - start, reply["usage"]["completion_tokens"], \
            reply["choices"][0]["message"]["content"]


class RawTransformers:
    """transformers ``generate`` on the fp32 folder, greedy, with a streamer to time the first token."""

    def __init__(self, spec: dict[str, Any]):
        import transformers

        self.tok = transformers.AutoTokenizer.from_pretrained(spec["hf_dir"])
        self.model = transformers.AutoModelForCausalLM.from_pretrained(spec["hf_dir"])

    def run(self, messages, max_new):
        from transformers.generation.streamers import BaseStreamer

        times: list[float] = []

        class Clock(BaseStreamer):
            def put(self, value):
                times.append(time.perf_counter())

            def end(self):
                pass

        start = time.perf_counter()
        enc = self.tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = self.model.generate(**enc, max_new_tokens=max_new, do_sample=False, streamer=Clock())
        new = out[0][enc["input_ids"].shape[1]:]
        # times[0] is the prompt being put; times[1] the first generated token.
        return times[1] - start, time.perf_counter() - start, len(new), self.tok.decode(new, skip_special_tokens=True)


class LlamaCpp:
    """llama.cpp (llama-cpp-python) on the bundled Q4_1 GGUF: the reference CPU engine at 4 bits."""

    def __init__(self, spec: dict[str, Any]):
        import os

        from llama_cpp import Llama

        self.llm = Llama(model_path=spec["gguf"], n_ctx=2048, n_threads=os.cpu_count(), verbose=False)

    def run(self, messages, max_new):
        start, first, n, parts = time.perf_counter(), None, 0, []
        for chunk in self.llm.create_chat_completion(messages=messages, max_tokens=max_new, temperature=0.0,
                                                     stream=True):
            piece = chunk["choices"][0]["delta"].get("content")
            if piece:
                n += 1
                parts.append(piece)
                if first is None:
                    first = time.perf_counter()
        return first - start, time.perf_counter() - start, n, "".join(parts)


ENGINES = {"onnx_pyfunc": OnnxPyfunc, "raw_ort": RawOrt, "transformers_pyfunc": TransformersPyfunc,
           "raw_transformers": RawTransformers, "llama_cpp": LlamaCpp}
