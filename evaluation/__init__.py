"""Benchmarks in their published layouts and the metrics their reference tools compute.

Below training in the layers (pure torch/numpy; no Ray, no MLflow), so that a training run's own
evaluation (`eval.benchmarks`) and `mmtrain eval --benchmark` compute the same numbers with the same
code. Which reference each metric was checked against is said in its module.
"""
