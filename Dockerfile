# ml-app:v1 - the offline batch predictor (`restar predict`).
# At run time it resolves models:/restar@production through MLFLOW_TRACKING_URI, so promoting a new
# version needs no rebuild. For air-gapped runs, bake a model folder in at build time:
#   docker build -t ml-app:v1 .
#   docker build -t ml-app:v1-baked \
#       --build-arg MODEL_DIR=torchserve/artifacts --build-arg MODEL_URI=/opt/restar/model .
#   docker run --rm -v "$PWD/batch:/data" -e MLFLOW_TRACKING_URI=http://mlflow:5000 ml-app:v1 \
#       --input /data/reviews.csv --output /data/predictions.parquet
FROM python:3.11.7-slim-bookworm

ARG MODEL_DIR=docker/no-model
ARG MODEL_URI=models:/restar@production
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN useradd --create-home --uid 10001 restar
WORKDIR /app

# CPU-only torch first, from the PyTorch CPU index, so the project install does not pull CUDA.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY restar ./restar
COPY registry ./registry
COPY promotion ./promotion
RUN pip install .

# docker/no-model holds only a README; a baked build copies a Re*Star model folder and points at it.
COPY --chown=restar:restar ${MODEL_DIR} /opt/restar/model
ENV RESTAR_MODEL_URI=${MODEL_URI}

USER 10001
WORKDIR /data
ENTRYPOINT ["restar", "predict"]
CMD ["--help"]
