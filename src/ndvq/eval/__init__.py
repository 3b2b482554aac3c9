"""Evaluation: metrics, codec comparison, codebook usage, robustness, reports."""
