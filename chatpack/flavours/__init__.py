"""The two MLflow flavours a fetched model is logged as.

``transformers_chat``: a transformers ``llm/v1/chat`` pipeline; ``onnx_chat``: the onnxruntime-genai chat pyfunc.
"""
