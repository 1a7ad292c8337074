# The registry server of docker-compose.yml: MLflow with a PostgreSQL backend and served artifacts.
FROM python:3.11.7-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
# mlflow[auth]: Flask-WTF for the basic-auth app (docker-compose profile `auth`); /mlflow-auth holds its users.
RUN pip install "mlflow[auth]==3.17.2" psycopg2-binary==2.9.10 \
    && useradd --create-home --uid 10001 mlflow \
    && mkdir -p /mlartifacts /mlflow-auth && chown mlflow:mlflow /mlartifacts /mlflow-auth
USER 10001
EXPOSE 5000
# The backend URI (with credentials) comes from the environment, set by docker-compose from .env.
CMD ["sh", "-c", "exec mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri \"$MLFLOW_BACKEND_STORE_URI\" --artifacts-destination /mlartifacts --allowed-hosts \"mlflow:5000,localhost:5000,127.0.0.1:5000\""]
