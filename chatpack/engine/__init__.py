"""Token generation over an onnxruntime-genai model, carried by every logged ONNX model as runtime code.

``chat_engine`` (the public :class:`~chatpack.engine.chat_engine.OnnxChatEngine`: prompts, context policy, replies),
``scheduler`` (model lock, queue, batch formation, stats), ``decode_step`` (one reply's next token: EOS, count,
detokenise, stop sequences, ``max_tokens``, what a stream may emit), ``stops`` (stop-sequence search and hold-back),
``search_options`` (request options -> genai search options), ``genai_model`` (the loaded model and its generators).
Imports only ``chatpack.protocol`` from the rest of ``chatpack``.
"""
