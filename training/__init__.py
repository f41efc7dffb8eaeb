"""Models, losses, the training loop, checkpoints, evaluation, tracking and the Ray Train worker."""
