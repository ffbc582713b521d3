"""Evaluation: the harness, baselines, metrics, result tables and the HTML viewer."""
