"""What differs per trainer: the Task protocol, one module per trainer, the registry of trainer specs."""
