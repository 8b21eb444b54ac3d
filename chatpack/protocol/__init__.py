"""The OpenAI protocol: the request model, response objects and chunks, and the error mapping.

Carried by every logged ONNX model (runtime code): imports nothing from the rest of ``chatpack``.
"""
