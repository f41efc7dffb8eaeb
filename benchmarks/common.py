"""Shared helpers for the benchmarks: JSON output and FLOP counting."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

H100_BF16_PEAK_FLOPS = 989e12  # dense bf16, the MFU denominator used by the GPU references


def forward_flops(fn) -> int:
    """FLOPs of one call of `fn`, counted by torch (matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def device_name(device: torch.device) -> str:
    return (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})"
    )


def write_report(path: Path, report: dict) -> None:
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), **report}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {path}")
