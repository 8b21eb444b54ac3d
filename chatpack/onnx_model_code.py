"""Models-from-code entry for the onnxruntime-genai chat pyfunc: MLflow runs this file to build the model."""

import mlflow

from chatpack.onnx_pyfunc import OnnxChatModel

mlflow.models.set_model(OnnxChatModel())
