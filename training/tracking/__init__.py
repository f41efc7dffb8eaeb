"""What a run reports: MLflow (tracker.py), the console progress line, figures. Metric names live
in training/config/metric_names.py (configs name them too)."""
