"""The training engine in pure torch: the loop, optimizer, parallelism, collectives, model inputs.
Knows nothing of Ray or MLflow (import-linter checks it)."""
