"""The service around the MLflow Model Registry (versions, aliases, audit log)."""
