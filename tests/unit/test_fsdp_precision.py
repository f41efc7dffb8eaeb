"""FSDP2 with bf16 blocks keeps CLIP's temperature (and SigLIP's bias) in fp32 on the root, as DDP
does: a bf16 copy of log(1/0.07) gave exp 14.24 where fp32 gives 14.29. Two gloo ranks on CPU."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.unit.test_loop_and_checkpoint import _batches, _cfg, _setup


def _rank_main(rank: int, out: str) -> None:
    from mmtrain.training.engine.parallelize import shard, transformer_blocks

    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    try:
        task, model, _, _ = _setup(_cfg())
        seen = []
        shard(model, transformer_blocks(model), bf16=True)
        model.register_forward_pre_hook(lambda module, args: seen.append(module.logit_scale.dtype))
        block = next(iter(transformer_blocks(model)))
        block.register_forward_pre_hook(lambda module, args: seen.append(module.attn.qkv.weight.dtype))
        batch = task.prepare_batch(next(iter(_batches())), torch.device("cpu"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = task.loss(model, batch)
        if rank == 0:
            torch.save({"dtypes": [str(d) for d in seen], "loss": float(loss.detach())}, f"{out}/result.pt")
    finally:
        dist.destroy_process_group()
    os._exit(0)  # see tests/unit/test_token_weighted_loss.py


def test_the_temperature_stays_fp32_while_blocks_gather_in_bf16(tmp_path):
    mp.start_processes(_rank_main, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    assert result["dtypes"] == ["torch.float32", "torch.bfloat16"]  # root (temperature), then a block
    assert 2.0 < result["loss"] < 4.0  # a real contrastive loss over both ranks' features
