"""Checkpoints as tensors (DCP) and JSON, saved and loaded without running code from them."""
