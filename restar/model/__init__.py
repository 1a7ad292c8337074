"""The model as it is served: the inference core, its model kinds and backends, calibration, the MLflow
pyfunc that carries them, and registering it."""
