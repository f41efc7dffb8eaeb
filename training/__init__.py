"""Training, one folder per concern: config/ (schema, loading), engine/ (the loop and parallelism in
pure torch), models/, checkpoint/, tracking/ (MLflow, console, figures), tasks/ (what differs per
trainer, and the registry of trainers) and ray_train/ (the driver, the worker, sweeps)."""
