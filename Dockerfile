# qwen-image-server on a CUDA host. Build (not done by CI):
#   docker build -t qwen-image-server .
# Run the API alone, or a worker per GPU, with the same image (docs/deploy.md):
#   docker run --env-file /etc/qwen-image/env -p 8000:8000 qwen-image-server serve --no-worker --host 0.0.0.0
#   docker run --gpus '"device=0"' --env-file /etc/qwen-image/env qwen-image-server worker
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/qwen-image
COPY pyproject.toml README.md ./
COPY src ./src
# The CUDA build of torch first, as the Makefile does (TORCH_SPEC), then the server with its extras.
RUN python3 -m venv .venv \
 && .venv/bin/pip install --no-cache-dir torch \
 && .venv/bin/pip install --no-cache-dir ".[postgres,s3,fp8]"
ENV QWEN_IMAGE_DATA_DIR=/var/lib/qwen-image HF_HOME=/var/cache/huggingface
VOLUME ["/var/lib/qwen-image", "/var/cache/huggingface"]
EXPOSE 8000
ENTRYPOINT ["/opt/qwen-image/.venv/bin/qwen-image"]
CMD ["serve", "--host", "0.0.0.0"]
