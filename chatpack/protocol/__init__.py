"""The OpenAI protocol: the request model, response objects and chunks, and the error mapping.

``request_model`` (pydantic models of both request forms), ``chat_request`` (``parse_request`` -> ``ChatRequest``,
``GenerationOptions``), ``validation_text`` (validation errors as one line naming the field), ``errors``
(``RequestError`` and OpenAI's error body), ``replies`` (``chat.completion`` objects and chunks).

Carried by every logged ONNX model (runtime code): imports nothing from the rest of ``chatpack``.
"""
