"""Token generation over the model builder's ONNX model, carried by every logged ONNX model as runtime code.

``chat_engine`` (the public :class:`~chatpack.engine.chat_engine.OnnxChatEngine`: prompts, context policy, which
request goes where), ``scheduler`` (who gets the model and the KV rows, when: the fair model lock, a request in line
for a row, which one goes into which row, admission under the KV budget), ``batch_loop`` (the continuous batch: runs
what the scheduler decides, prefills, decode steps, fast-forward, speculation, release), ``kv_rows`` (the decoder
graph over KV rows), ``memory`` (the KV budget and the rows' layout), ``prompt_passes`` (prefill passes, prefix
reuse, settling, drafts), ``sampler`` (a row's next token), ``detokenizer`` (one reply's next token in, its text
out: EOS, count, incremental detokenising, stop sequences, ``max_tokens``, what a stream may emit), ``genai_model``
(onnxruntime-genai: the tokenizer, and the generator with its search options for a request longer than a KV row),
``grammar``/``guidance`` (constrained decoding), ``logprobs``, ``tool_calls``/``tool_prompt`` (tools).
Imports only ``chatpack.protocol`` from the rest of ``chatpack``.
"""
