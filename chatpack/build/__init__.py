"""Building the ONNX form of a transformers folder with the onnxruntime-genai model builder."""
