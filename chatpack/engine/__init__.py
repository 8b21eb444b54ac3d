"""Token generation over an onnxruntime-genai model: the chat engine, its decode step, batching and stop sequences.

Carried by every logged ONNX model (runtime code): imports only ``chatpack.protocol`` from the rest of ``chatpack``.
"""
