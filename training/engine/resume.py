"""What a resumed run keeps, what it may change, and where its randomness comes from.

A run that continues from a checkpoint keeps its learning-rate schedule unless asked for a new one,
refuses config changes that cannot take effect mid-run, and draws its random numbers from
(seed, step, rank), so a resumed run is as reproducible as a fresh one.
"""

from __future__ import annotations

import dataclasses
import hashlib

from mmtrain.training.config.io import flatten
from mmtrain.training.engine.loop import TrainState

# Keys whose change mid-run would load weights into a different model or feed it different inputs.
FROZEN_PREFIXES = ("model.", "data.context_length", "data.tokenizer", "data.augment.image_size", "max_length", "stage")
HOW_STARTED = ("run.resume",)  # not part of what a run is: never a change
GLOBAL_BATCH = "global batch (scaling.num_workers x loop.batch_size_per_worker x optim.grad_accum_steps)"


def seed_for(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed that differs for every (seed, step, rank) and is the same run to run."""
    digest = hashlib.blake2b(f"{seed}/{step}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def plan_schedule(state: TrainState, max_steps: int, restart: bool) -> tuple[TrainState, str]:
    """The schedule to train under, and a note for the user when a resume changed or kept it."""
    if state.schedule_steps == 0:  # a fresh run (or a checkpoint made before schedules were saved)
        return dataclasses.replace(state, schedule_start=0, schedule_steps=max_steps), ""
    end = state.schedule_start + state.schedule_steps
    if end == max_steps:
        return state, ""
    if restart:
        note = (
            f"new learning-rate schedule: warmup + cosine from step {state.step} to {max_steps} "
            "(optim.restart_schedule=true)"
        )
        return dataclasses.replace(state, schedule_start=state.step, schedule_steps=max_steps - state.step), note
    return state, (
        f"learning-rate schedule kept: it ends at step {end}, loop.max_steps is now {max_steps}; "
        "set optim.restart_schedule=true for a new warmup + cosine to the new max_steps"
    )


def config_changes(saved: dict, new: dict) -> dict[str, tuple]:
    """{key: (saved value, new value)} for every key whose value differs, but for the keys that say
    how a command was started rather than what the run is."""
    old_flat, new_flat = flatten(saved), flatten(new)
    return {
        key: (old_flat.get(key), new_flat.get(key))
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key) != new_flat.get(key) and key not in HOW_STARTED
    }


def check_resume_config(saved: dict, new: dict, checkpoint: str) -> dict[str, tuple]:
    """The changes (printed); a ValueError naming them when any cannot take effect mid-run."""
    changes = config_changes(saved, new)
    frozen = [key for key in changes if key.startswith(FROZEN_PREFIXES)]
    if _global_batch(saved) != _global_batch(new):
        frozen.append(f"{GLOBAL_BATCH}: {_global_batch(saved)} -> {_global_batch(new)}")
    if frozen:
        raise ValueError(
            f"cannot resume from {checkpoint} with this config: "
            + "; ".join(
                key if key.startswith(GLOBAL_BATCH) else f"{key}: {changes[key][0]!r} -> {changes[key][1]!r}"
                for key in frozen
            )
            + ". Put these keys back to continue the run, or start a new run (another run.name)."
        )
    return changes


def format_changes(changes: dict[str, tuple]) -> str:
    return "\n".join(f"  {key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())


def _global_batch(config: dict) -> int | None:
    try:
        return (
            config["scaling"]["num_workers"]
            * config["loop"]["batch_size_per_worker"]
            * config["optim"]["grad_accum_steps"]
        )
    except (KeyError, TypeError):
        return None
