"""The Ray layer of training: the driver that builds the TorchTrainer, the worker function, sweeps.
The only part of training/ that imports ray.train or ray.tune."""
