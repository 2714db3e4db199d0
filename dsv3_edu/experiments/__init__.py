"""Experiments whose results the lessons load from data/; each reruns with `python -m dsv3_edu.experiments.NAME`."""
