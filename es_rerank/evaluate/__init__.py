"""Measure the pipeline on a BEIR collection: metrics, depth sweep, reports."""
