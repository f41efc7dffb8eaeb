"""Where a train step's time goes: a torch.profiler run summarised by kernel family.

On a GPU it counts CUDA kernel time (what the device did) against the unprofiled step time, so
`busy_fraction` below 1 means the GPU waited for the host; the families then say whether the rest
is matmuls, attention, Triton-fused elementwise work, the optimizer or copies. On a CPU it counts
the self time of every profiled op against the profiled step (the profiler's own overhead slows
the host, not a GPU's kernels), which is enough to check the summary itself.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

# First match wins, so the specific names come before the broad ones ("sm90_xmma_gemm" is a matmul,
# "triton_per_fused_native_layer_norm" a fused norm, "aten::_foreach_add_" optimizer work).
FAMILIES = (
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("optimizer+clip", ("adam", "multi_tensor", "foreach")),  # clip_grad_norm_ is foreach_norm
    (
        "matmul",
        (
            "gemm",
            "cutlass",
            "xmma",
            "nvjet",
            "aten::mm",
            "aten::addmm",
            "aten::bmm",
            "aten::matmul",
            "aten::linear",
            "convolution",
            "conv2d",
        ),
    ),
    ("triton fused", ("triton",)),
    ("copy/cast", ("copy", "memcpy", "memset", "cast")),
    ("norm/softmax", ("norm", "softmax")),
    ("elementwise", ("elementwise", "vectorized", "aten::add", "aten::mul", "aten::gelu", "aten::div")),
    ("reduction", ("reduce", "aten::sum", "aten::mean")),
)


def family(name: str) -> str:
    lowered = name.lower()
    for label, needles in FAMILIES:
        if any(needle in lowered for needle in needles):
            return label
    return "other"


def profile_steps(
    run_steps: Callable[[int], None], steps: int, step_s: float, device: torch.device, top: int = 15
) -> dict:
    """Profile `run_steps(steps)`; on a GPU the busy fraction is taken against `step_s`, the unprofiled step time."""
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    _sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        run_steps(steps)
        _sync(device)
    profiled_step_s = (time.perf_counter() - start) / steps
    events = [
        (event.key, event.count, _self_us(event, on_gpu))
        for event in prof.key_averages()
        if (event.device_type == DeviceType.CUDA) == on_gpu
    ]
    return summarize(
        events,
        steps,
        step_s if on_gpu else profiled_step_s,
        profiled_step_s,
        counted="cuda kernels" if on_gpu else "cpu ops",
        top=top,
    )


def summarize(
    events: list[tuple[str, int, float]], steps: int, step_s: float, profiled_step_s: float, counted: str, top: int = 15
) -> dict:
    """events: (name, calls, self microseconds) over `steps` steps -> per-step milliseconds by family."""
    per_step_ms = [(name, calls / steps, us / steps / 1e3) for name, calls, us in events if us > 0]
    total_ms = sum(ms for _, _, ms in per_step_ms)
    families: dict[str, float] = {}
    for name, _, ms in per_step_ms:
        families[family(name)] = families.get(family(name), 0.0) + ms
    ranked = sorted(per_step_ms, key=lambda item: -item[2])[:top]
    return {
        "counted": counted,
        "profiled_steps": steps,
        "step_ms": step_s * 1e3,
        "profiled_step_ms": profiled_step_s * 1e3,
        "counted_ms_per_step": total_ms,
        "busy_fraction": total_ms / (step_s * 1e3) if step_s > 0 else None,
        "families": {
            label: {"ms_per_step": ms, "share": ms / total_ms}
            for label, ms in sorted(families.items(), key=lambda item: -item[1])
        },
        "top": [
            {
                "name": name[:160],
                "family": family(name),
                "calls_per_step": calls,
                "ms_per_step": ms,
                "share": ms / total_ms,
            }
            for name, calls, ms in ranked
        ],
    }


def format_profile(summary: dict) -> str:
    lines = [
        f"profile ({summary['counted']}, {summary['profiled_steps']} steps): "
        f"{summary['counted_ms_per_step']:.2f} ms counted per {summary['step_ms']:.2f} ms step "
        f"(busy {summary['busy_fraction']:.0%})"
    ]
    lines += [
        f"  {label:<14} {entry['ms_per_step']:8.2f} ms  {entry['share']:6.1%}"
        for label, entry in summary["families"].items()
    ]
    lines += [
        f"  {entry['ms_per_step']:8.3f} ms {entry['share']:6.1%} x{entry['calls_per_step']:<5.0f} "
        f"[{entry['family']}] {entry['name'][:90]}"
        for entry in summary["top"]
    ]
    return "\n".join(lines)


def _self_us(event, on_gpu: bool) -> float:
    if on_gpu:
        return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)
    return event.self_cpu_time_total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
