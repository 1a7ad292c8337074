"""Promotion gates, policy and the `restar-promote` CLI."""
