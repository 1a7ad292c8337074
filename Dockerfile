# ml-app:v1 - the offline batch predictor (`restar predict`). It resolves models:/restar@production
# through MLFLOW_TRACKING_URI at run time, so promoting a new version needs no rebuild. Built with
# BuildKit (docs/containers.md has both paths):
#   docker compose build predictor                       # the upstream bases and indexes
#   docker compose run --rm predictor --input /data/reviews.csv --output /data/predictions.parquet
# Build arguments for a restricted network: BASE_IMAGE (a local Python 3.11 base: docker/base/build.sh),
# TORCH_INDEX_URL (empty: torch from the wheels in docker/wheels/), PIP_INDEX_URL, and the BuildKit
# secret `ca_bundle` (an extra CA bundle for pip; no layer keeps it). For air-gapped runs, bake a model
# folder in: MODEL_DIR=<folder in the context> MODEL_URI=/opt/restar/model.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL} \
    TORCH_INDEX_URL=${TORCH_INDEX_URL}
RUN python3 -m venv /opt/venv
COPY docker/pip-install.sh /usr/local/bin/pip-install.sh
# CPU-only torch first, so the project install does not pull a CUDA build.
RUN --mount=type=secret,id=ca_bundle --mount=type=bind,source=docker/wheels,target=/wheels \
    sh /usr/local/bin/pip-install.sh torch
WORKDIR /src
COPY pyproject.toml README.md ./
COPY restar ./restar
COPY registry ./registry
COPY promotion ./promotion
# Only what scoring needs (pyproject's dependencies; training is the `train` extra).
RUN --mount=type=secret,id=ca_bundle sh /usr/local/bin/pip-install.sh . \
    && find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
ARG MODEL_DIR=docker/no-model
ARG MODEL_URI=models:/restar@production
# HF_HOME: transformers' cache in /tmp, the one place a --read-only run needs a tmpfs.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/tmp/huggingface \
    RESTAR_MODEL_URI=${MODEL_URI}
RUN useradd --create-home --uid 10001 restar
COPY --from=build /opt/venv /opt/venv
# docker/no-model holds only a README; a baked build copies a Re*Star model folder and points at it.
COPY --chown=restar:restar ${MODEL_DIR} /opt/restar/model

USER 10001
WORKDIR /data
ENTRYPOINT ["restar", "predict"]
CMD ["--help"]
