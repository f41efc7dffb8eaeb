"""The release: the wheel's version (pyproject.toml reads it) and `mmtrain --version`."""

__version__ = "0.2.0"
