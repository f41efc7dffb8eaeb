"""What a run reports: metric names, the console progress line, MLflow, figures."""
