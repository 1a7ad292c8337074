# The registry server of docker-compose.yml: MLflow with a PostgreSQL backend and served artifacts.
# The build arguments and the `ca_bundle` secret are the predictor's (the root Dockerfile says how).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL}
RUN python3 -m venv /opt/venv
COPY docker/pip-install.sh /usr/local/bin/pip-install.sh
# mlflow[auth]: Flask-WTF for the basic-auth app (docker-compose profile `auth`).
RUN --mount=type=secret,id=ca_bundle sh /usr/local/bin/pip-install.sh "mlflow[auth]==3.17.2" psycopg2-binary==2.9.10 \
    && find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
# The Host headers the server answers (DNS-rebinding protection); docker-compose.yml adds its published port.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_SERVER_ALLOWED_HOSTS=mlflow:5000,localhost:5000,127.0.0.1:5000
COPY --from=build /opt/venv /opt/venv
# /mlflow-auth holds the basic-auth app's users.
RUN useradd --create-home --uid 10001 mlflow \
    && mkdir -p /mlartifacts /mlflow-auth && chown mlflow:mlflow /mlartifacts /mlflow-auth
USER 10001
EXPOSE 5000
# The backend URI (with credentials) comes from the environment, set by docker-compose from .env.
CMD ["sh", "-c", "exec mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri \"$MLFLOW_BACKEND_STORE_URI\" --artifacts-destination /mlartifacts"]
