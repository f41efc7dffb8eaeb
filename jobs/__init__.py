"""Thin entry points: parse the command line, load a config, call pipelines/ or training/."""
