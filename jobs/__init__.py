"""Thin entry points: parse the command line, load a config, call pipelines/, training/ or inference/.

`mmtrain` builds every subcommand's parser when it starts, so each module's handlers import what
their command runs inside the handler (Ray, torch, transformers, MLflow take seconds to import):
`mmtrain --help` and a config error answer in under half a second.
"""
