"""chatpack: package small chat LLMs as MLflow models (transformers and onnxruntime-genai flavours).

Each module holds one concept; the MLflow Project's steps in ``steps/`` stay thin and call into it.
"""

__version__ = "0.1.0"
