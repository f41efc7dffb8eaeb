"""How a model spreads over the Ray Train workers, applied from outside the model files (as
torchtitan's parallelize_*): activation checkpointing per transformer block, then DDP or FSDP2.

FSDP2 (`fully_shard`) shards each transformer block of the towers and the LM as a unit, then the
rest of the model as the root: a block's parameters are gathered just before its forward and
backward and freed after, its gradients reduce-scattered, so each rank keeps 1/N of the
parameters, gradients and AdamW state. Frozen modules are sharded too (they have no gradients or
optimizer state anyway). On GPU with bf16, blocks compute in bf16 while gradients are reduced and
master weights kept in fp32 (MixedPrecisionPolicy); on CPU everything stays fp32.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from mmtrain.training.engine.distributed import world
from mmtrain.training.engine.loop import NoSync


@dataclass
class Parallelized:
    model: nn.Module  # what the loop calls: the DDP wrapper, or the model itself sharded in place
    no_sync: NoSync  # a context without gradient synchronisation (accumulation), None with one rank
    strategy: str  # what was applied: "single", "ddp" or "fsdp"


def parallelize(
    model: nn.Module, strategy: str, activation_checkpointing: str, device: torch.device, bf16: bool
) -> Parallelized:
    """`model` checkpointed, on `device`, and wrapped or sharded for this run's ranks. Give it the
    model still on the host: FSDP moves it one block at a time, so no device ever holds it whole."""
    blocks = transformer_blocks(model)
    if activation_checkpointing == "blocks":
        blocks = checkpoint_blocks(model, blocks)
    if strategy == "fsdp" and world()[1] > 1:
        shard(model, blocks, bf16 and device.type == "cuda")  # fully_shard moves each unit to the device
        return Parallelized(model, _fsdp_no_sync(model), "fsdp")
    model.to(device)
    if world()[1] == 1:
        return Parallelized(model, None, "single")

    wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Parallelized(wrapped, wrapped.no_sync, "ddp")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks, in order: the classes a module names in `_no_split_modules` (a Hugging
    Face model's decoder or encoder layers, as accelerate's FSDP wrapping uses them; our towers
    declare their `Block` the same way)."""
    block_names = set()
    for module in model.modules():
        block_names.update(getattr(module, "_no_split_modules", None) or ())
    # By any class in its hierarchy: FSDP2 turns a sharded Block's class into a subclass, FSDPBlock.
    return [module for module in model.modules() if any(cls.__name__ in block_names for cls in type(module).__mro__)]


def _hf_checkpointing_enable(hf_model: nn.Module) -> None:
    # transformers 5.x renamed gradient_checkpointing_enable (deprecated, warns) to
    # activation_checkpointing_enable; older releases have only the first.
    kwargs = {"use_reentrant": False}
    if hasattr(hf_model, "activation_checkpointing_enable"):
        hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def checkpoint_blocks(model: nn.Module, blocks: list[nn.Module]) -> list[nn.Module]:
    """Recompute block activations in the backward. A Hugging Face model that trains uses its own
    gradient checkpointing (it knows its layers' calling convention, caches included); our blocks,
    and the layers of a frozen Hugging Face model, are wrapped with torch's checkpoint wrapper
    (state-dict names unchanged): a frozen module stays in eval mode (no dropout), where HF's own
    checkpointing is off, yet gradients still pass through it (stage 1's LM) and its activations
    would all be kept. Returns the blocks as now called."""

    own_checkpointing = [
        module
        for module in model.modules()
        if getattr(module, "supports_gradient_checkpointing", False)
        and any(param.requires_grad for param in module.parameters())
    ]
    for hf_model in own_checkpointing:
        _hf_checkpointing_enable(hf_model)
    handled = {id(module) for hf_model in own_checkpointing for module in hf_model.modules()}
    wrapped = []
    for block in blocks:
        if id(block) in handled:
            wrapped.append(block)
            continue
        parent, name = _parent_of(model, block)
        replacement = checkpoint_wrapper(block)
        parent.register_module(name, replacement)
        wrapped.append(replacement)
    return wrapped


def _parent_of(model: nn.Module, target: nn.Module) -> tuple[nn.Module, str]:
    for module in model.modules():
        for name, child in module.named_children():
            if child is target:
                return module, name
    raise AssertionError("block not found in the model")


def shard(model: nn.Module, blocks: list[nn.Module], bf16: bool) -> None:
    """FSDP2 over every block, then the root (embeddings, norms, heads, the projector). With bf16
    the blocks gather their parameters in bf16; the root keeps fp32 parameters, as DDP does (bf16
    autocast still runs its matmuls in bf16): CLIP's temperature and SigLIP's bias live there, and
    exp(logit_scale) from a bf16 copy was 14.24 where fp32 gives 14.29."""

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    for block in blocks:
        fully_shard(block, **({"mp_policy": policy} if policy else {}))
    fully_shard(model)


def _fsdp_no_sync(model: nn.Module) -> NoSync:
    @contextmanager
    def no_sync():
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    return no_sync


@contextmanager
def full_parameters(model: nn.Module, strategy: str):
    """Within: every parameter whole on every rank, so code other than forward (evaluation,
    generation, embedding methods) can run, with any number of forwards per rank and no collectives.
    Costs the whole model's parameters per rank for the duration (no gradients or optimizer state)."""
    if strategy != "fsdp":
        yield
        return

    sharded = [module for module in model.modules() if isinstance(module, FSDPModule)]
    inner = [module for module in sharded if module is not model]
    for module in inner:
        module.set_reshard_after_forward(False, recurse=False)
    for module in sharded:
        module.unshard()
    try:
        yield
    finally:
        for module in inner:
            module.set_reshard_after_forward(True, recurse=False)
        for module in sharded:
            module.reshard()
