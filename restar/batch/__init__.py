"""Batch scoring: the offline predictor (files, Spark) and the latency benchmark built on it."""
