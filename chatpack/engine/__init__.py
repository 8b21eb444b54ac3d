"""Token generation over the model builder's ONNX model, carried by every logged ONNX model as runtime code.

``chat_engine`` (the public :class:`~chatpack.engine.chat_engine.OnnxChatEngine`: prompts, context policy, which
request goes where), ``batch_loop`` (the continuous batch), ``batch_job`` (one request in it), ``kv_rows`` (the decoder
graph over KV rows), ``prompt_passes`` (prefill passes, prefix reuse, drafts), ``sampler`` (a row's next token),
``scheduler`` (the fair model lock, a checked request, the KV rows' layout), ``decode_step`` (one reply's next token:
EOS, count, detokenise, stop sequences, ``max_tokens``, what a stream may emit), ``stops`` (stop-sequence search and
hold-back), ``search_options`` (request options -> genai search options), ``genai_model`` (onnxruntime-genai for
constrained and oversize requests).
Imports only ``chatpack.protocol`` from the rest of ``chatpack``.
"""
