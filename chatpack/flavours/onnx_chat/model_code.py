"""Models-from-code entry for the onnxruntime-genai chat pyfunc: MLflow runs this file to build the model."""

import mlflow

from chatpack.flavours.onnx_chat.pyfunc_model import OnnxChatModel

mlflow.models.set_model(OnnxChatModel())
