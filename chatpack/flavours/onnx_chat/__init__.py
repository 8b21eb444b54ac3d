"""The onnxruntime-genai chat pyfunc: the ``PythonModel`` (runtime), its models-from-code file, and its logging."""
