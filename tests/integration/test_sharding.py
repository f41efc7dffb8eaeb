"""FSDP2 against DDP in real Ray Train workers (CPU, gloo), and checkpoints that reshard: a run
saved by 2 FSDP workers resumes on 1 worker, and its weights arrive intact."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mmtrain.pipelines import contract
from mmtrain.training.checkpoint.store import read_model_state, read_saved_tensors
from mmtrain.training.config.io import load_config
from mmtrain.training.config.schema import ClipRunConfig, LoopConfig, ModuleLearningRates, OptimConfig
from tests.unit.test_loop_and_checkpoint import _cfg as tiny_clip_cfg
from tests.unit.test_vlm import _cfg as tiny_vlm_cfg
from tests.unit.test_vlm import make_parts

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
STEPS = 4


def _clip_batches(task, rank: int):
    """Rank-specific batches: the same on every run, different between ranks."""
    generator = torch.Generator().manual_seed(100 + rank)
    for _ in range(STEPS):
        labels = torch.randint(0, 4, (8,), generator=generator)
        images = torch.randint(0, 255, (8, 16, 16, 3), dtype=torch.uint8, generator=generator)
        ids = torch.stack([torch.tensor([1, 2 + int(label), 3, 0, 0, 0]) for label in labels]).int()
        yield {contract.IMAGE: images, contract.INPUT_IDS: ids, contract.ATTENTION_MASK: (ids != 0).to(torch.uint8)}


def _vlm_batches(task, rank: int):
    from mmtrain.pipelines.conversations import ConversationEncoder

    encoder = ConversationEncoder(task.tokenizer, num_image_tokens=4, max_length=32)
    generator = torch.Generator().manual_seed(100 + rank)
    for step in range(STEPS):
        answers = ["red", "blue", "a red circle", "blue shapes"]
        rows = [
            encoder.pad(
                encoder.encode(
                    [
                        {"from": "human", "value": "<image>\nwhat colour are the shapes?"},
                        {"from": "gpt", "value": answers[(step + row + rank) % 4]},
                    ]
                )
            )
            for row in range(4)
        ]
        yield {
            contract.IMAGE: torch.randint(0, 255, (4, 1, 16, 16, 3), dtype=torch.uint8, generator=generator),
            contract.NUM_IMAGES: torch.ones(4, dtype=torch.int32),
            contract.INPUT_IDS: torch.tensor([r[0] for r in rows]),
            contract.ATTENTION_MASK: torch.tensor([r[1] for r in rows]),
            contract.LABELS: torch.tensor([r[2] for r in rows]),
        }


BATCHES = {"clip": _clip_batches, "vlm": _vlm_batches}
# The model's own forward (the CLIP task's loss gathers features across ranks, a collective).
FORWARD_INPUTS = {
    "clip": (contract.IMAGE, contract.INPUT_IDS, contract.ATTENTION_MASK),
    "vlm": (contract.IMAGE, contract.INPUT_IDS, contract.LABELS, contract.PREDICTING),
}


def _same_batches_under_each_strategy(config: dict) -> None:
    """In each Ray Train worker: the same initial weights and this rank's same batches, trained
    under DDP then under FSDP2 with the real loop; each strategy's checkpoint written by all ranks."""
    import ray.train

    from mmtrain.training.checkpoint.store import save_checkpoint
    from mmtrain.training.engine.distributed import global_mean
    from mmtrain.training.engine.loop import TrainState, train
    from mmtrain.training.engine.optim import build_optimizer, warmup_cosine
    from mmtrain.training.engine.parallelize import full_parameters, parallelize
    from mmtrain.training.tasks.registry import trainer

    rank, cfg, out = ray.train.get_context().get_world_rank(), config["cfg"], Path(config["out"])
    task = trainer(config["task"]).task(cfg)
    losses = {}
    for strategy in ("ddp", "fsdp"):
        torch.manual_seed(0)
        model = task.build_model()
        parallel = parallelize(model, strategy, "none", torch.device("cpu"), bf16=False)
        assert parallel.strategy == strategy
        optimizer = build_optimizer(task.param_groups(model), cfg.optim)
        scheduler = warmup_cosine(optimizer, cfg.optim, STEPS)
        seen = []
        train(
            task,
            parallel.model,
            optimizer,
            scheduler,
            TrainState(),
            BATCHES[config["task"]](task, rank),
            STEPS,
            torch.device("cpu"),
            lambda state, result: seen.append(float(global_mean(result.loss))) or True,
            grad_clip_norm=cfg.optim.grad_clip_norm,
            no_sync=parallel.no_sync,
        )
        losses[strategy] = seen
        # Evaluation-style work with a different number of forwards per rank (generation stops at
        # different lengths): with the whole model gathered, no rank waits on another.
        with torch.no_grad(), full_parameters(model, parallel.strategy):
            model.eval()
            batch = task.prepare_batch(next(BATCHES[config["task"]](task, rank)), torch.device("cpu"))
            for _ in range(1 + 2 * rank):
                model(*[batch[key] for key in FORWARD_INPUTS[config["task"]]])
        save_checkpoint(
            out / strategy, model, optimizer, TrainState(step=STEPS), {}, frozen_sources=task.frozen_sources()
        )
    if rank == 0:
        (out / "losses.json").write_text(json.dumps(losses))
    ray.train.report({"done": 1})


def _run_both(task: str, cfg, out: Path) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    TorchTrainer(
        _same_batches_under_each_strategy,
        train_loop_config={"task": task, "cfg": cfg, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name=f"same-batches-{task}", storage_path=str(out / "ray")),
    ).fit()
    return json.loads((out / "losses.json").read_text())


def _assert_same_training(out: Path, losses: dict) -> None:
    assert len(losses["ddp"]) == STEPS and losses["ddp"][-1] != losses["ddp"][0]
    for ddp, fsdp in zip(losses["ddp"], losses["fsdp"]):
        assert abs(ddp - fsdp) <= 1e-5 * max(1.0, abs(ddp)), losses
    ddp_weights, fsdp_weights = read_model_state(out / "ddp"), read_model_state(out / "fsdp")
    assert ddp_weights.keys() == fsdp_weights.keys()
    assert len(list((out / "fsdp" / "weights").glob("__*_0.distcp"))) == 2  # each rank wrote its shards
    for key in ddp_weights:
        assert torch.allclose(ddp_weights[key], fsdp_weights[key], atol=1e-5, rtol=1e-4), key


def test_fsdp_trains_clip_as_ddp_does(ray_local, tmp_path):
    cfg = dataclasses.replace(
        tiny_clip_cfg(),
        optim=OptimConfig(lr=3e-3, warmup_steps=1),
        loop=LoopConfig(max_steps=STEPS, batch_size_per_worker=8),
    )
    losses = _run_both("clip", cfg, tmp_path)
    _assert_same_training(tmp_path, losses)


def test_fsdp_trains_vlm_stage2_as_ddp_does(ray_local, tmp_path):
    root, lm = make_parts(tmp_path / "parts")
    cfg = dataclasses.replace(
        tiny_vlm_cfg(root, lm), stage="conversations", lrs=ModuleLearningRates(vision=0, projector=3e-3, lm=3e-3)
    )
    losses = _run_both("vlm", cfg, tmp_path)
    _assert_same_training(tmp_path, losses)
    # The frozen tower is referenced, not saved; the LM (training) is saved.
    saved = read_model_state(tmp_path / "fsdp")
    assert not any(key.startswith("vision.") for key in saved) and any(key.startswith("lm.") for key in saved)


def test_an_fsdp_run_resumes_on_one_worker(ray_local, synth_dir, tmp_path):
    """Saved by 2 FSDP workers, resumed by 1 (DDP, the global batch kept): the resumed run starts
    from exactly the saved weights and optimizer state, and its checkpoint holds them."""
    from mmtrain.training.ray_train.driver import run_training

    out = tmp_path / "runs"
    common = [
        f"run.output_dir={out}",
        "run.name=reshard",
        f"data.train_shards=[{synth_dir}/train-*.tar]",
        "tracking.tracking_uri=none",
        "loop.max_steps=6",
        "loop.log_every=3",
    ]
    # Evaluated under FSDP too: the whole model is gathered on each rank for the evaluation, and
    # each rank embeds its own share of the eval set with it (training/parallelize.full_parameters).
    sharded = run_training(
        load_config(
            ClipRunConfig,
            REPO / "conf/clip/tiny.yaml",
            common
            + [
                "scaling.strategy=fsdp",
                "scaling.num_workers=2",
                "loop.batch_size_per_worker=16",
                "loop.activation_checkpointing=blocks",
                f"data.eval_shards=[{synth_dir}/val-*.tar]",
                "eval.batch_size=24",
            ],
        )
    )
    assert sharded["step"] == 6 and sharded["val/eval_samples"] == 64 and 0 <= sharded["val/zero_shot_top1"] <= 1
    resumed = run_training(
        load_config(
            ClipRunConfig,
            REPO / "conf/clip/tiny.yaml",
            common
            + ["scaling.strategy=ddp", "scaling.num_workers=1", "loop.batch_size_per_worker=32", "data.eval_shards=[]"]
            + ["run.resume=auto"],  # a finished run, continued only to be saved again by one worker
        )
    )
    assert resumed["step"] == 6 and resumed["checkpoint"] != sharded["checkpoint"]
    for part in ("model", "optimizer"):
        before, after = read_saved_tensors(sharded["checkpoint"], part), read_saved_tensors(resumed["checkpoint"], part)
        assert before.keys() == after.keys() and len(before) > 10
        for key in before:
            assert torch.equal(before[key], after[key]), key
    # One process reads the whole model from the sharded checkpoint: export to transformers' CLIPModel.
    from transformers import CLIPModel

    from mmtrain.training.tasks.export import export_checkpoint

    exported, _ = export_checkpoint(Path(sharded["checkpoint"]), tmp_path / "hf")
    weights = read_model_state(sharded["checkpoint"])
    hf = CLIPModel.from_pretrained(exported)
    assert torch.equal(hf.visual_projection.weight, weights["visual.proj.weight"])
    assert torch.equal(hf.logit_scale.reshape(1), weights["logit_scale"])
    # samples_seen counts every rank's samples, and continues across the change of worker count
    assert sharded["train/samples_seen"] == 6 * 2 * 16
    further = run_training(
        load_config(
            ClipRunConfig,
            REPO / "conf/clip/tiny.yaml",
            common
            + ["scaling.num_workers=1", "loop.batch_size_per_worker=32", "data.eval_shards=[]", "loop.max_steps=8"]
            + ["run.resume=must"],
        )
    )
    assert further["step"] == 8 and further["train/samples_seen"] == 6 * 2 * 16 + 2 * 32


def test_evaluation_sees_every_sample_once_on_any_worker_count(ray_local):
    """Ray's equal split drops up to one sample per worker; the evaluation split keeps them all."""
    import threading

    import ray

    from mmtrain.training.ray_train.dataset_split import TrainEqualEvalWhole

    splits = TrainEqualEvalWhole().configure({"train": ray.data.range(10), "eval": ray.data.range(7)}, 3, None, None)
    seen = [[] for _ in splits]

    def consume(rank):  # streaming splits are read at the same time, one reader per rank
        for name in ("eval", "train"):
            seen[rank].append(sorted(row["id"] for row in splits[rank][name].iter_rows()))

    threads = [threading.Thread(target=consume, args=(rank,)) for rank in range(3)]
    [thread.start() for thread in threads]
    [thread.join(timeout=120) for thread in threads]
    assert sorted(sum((eval_ids for eval_ids, _ in seen), [])) == list(range(7))
    assert len({len(train_ids) for _, train_ids in seen}) == 1  # training stays equal (lockstep)
