"""Small models for the inference tests, made in-process in seconds (no Ray Train): a CLIP trained
on synthetic shards, saved as a run saves its checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmtrain.pipelines import contract
from mmtrain.pipelines.config import AugmentConfig, DataConfig
from mmtrain.pipelines.images import decode_eval
from mmtrain.pipelines.sources import resolve_shards
from mmtrain.pipelines.tar_samples import Record, iter_records
from mmtrain.pipelines.tokenizer import configure_fixed_length, load_tokenizer
from mmtrain.training.checkpoint.store import save_checkpoint
from mmtrain.training.config.io import to_dict
from mmtrain.training.config.schema import ClipModelConfig, ClipRunConfig, TextConfig, VisionConfig
from mmtrain.training.engine.loop import TrainState
from mmtrain.training.tasks.clip import ClipTask


def tiny_clip_config(synth_dir: Path, image_size: int = 32) -> ClipRunConfig:
    tokenizer = str((Path(synth_dir) / "tokenizer.json").resolve())
    context = 16
    return ClipRunConfig(
        data=DataConfig(tokenizer=tokenizer, context_length=context, augment=AugmentConfig(image_size=image_size)),
        model=ClipModelConfig(
            embed_dim=32,
            vision=VisionConfig(image_size=image_size, patch_size=8, width=64, layers=2, heads=2),
            text=TextConfig(vocab_size=load_tokenizer(tokenizer).get_vocab_size(), width=64, layers=2, heads=2),
        ),
    )


def decoded(specs: list[str], cfg: ClipRunConfig) -> dict:
    """Every good sample of the shards as the eval pipeline would deliver it (numpy columns)."""
    shards = resolve_shards(specs)
    records = []
    for path in shards.paths:
        with shards.filesystem.open_input_file(path) as stream:
            records += [r for r in iter_records(stream) if isinstance(r, Record)]
    tokenizer = configure_fixed_length(load_tokenizer(cfg.data.tokenizer), cfg.data.context_length)
    encodings = tokenizer.encode_batch([r.caption for r in records])
    return {
        contract.IMAGE: np.stack([decode_eval(r.image_bytes, cfg.data.augment, 1 << 26) for r in records]),
        contract.INPUT_IDS: np.array([e.ids for e in encodings], dtype=np.int64),
        contract.ATTENTION_MASK: np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "caption": [r.caption for r in records],
        contract.KEY: [r.key for r in records],
    }


def save_clip(model, cfg: ClipRunConfig, run_dir: Path, step: int = 0) -> Path:
    return save_checkpoint(Path(run_dir) / f"checkpoint_{step:06d}", model, None, TrainState(step=step), to_dict(cfg))


def train_tiny_clip(synth_dir: Path, run_dir: Path, steps: int = 150, batch_size: int = 64, seed: int = 0) -> Path:
    """A tiny CLIP trained `steps` steps on the synthetic train shards; returns its checkpoint."""
    torch.manual_seed(seed)
    cfg = tiny_clip_config(synth_dir)
    task = ClipTask(cfg)
    model = task.build_model()
    data = decoded([str(Path(synth_dir) / "train-*.tar")], cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    count = len(data[contract.KEY])
    for _ in range(steps):
        rows = rng.choice(count, size=min(batch_size, count), replace=False)
        batch = task.prepare_batch(
            {k: torch.from_numpy(data[k][rows]) for k in (contract.IMAGE, contract.INPUT_IDS, contract.ATTENTION_MASK)},
            torch.device("cpu"),
        )
        loss, _ = task.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.clamp_logit_scale(100.0)
    return save_clip(model.eval(), cfg, run_dir, steps)


def save_tiny_vlm(tower_checkpoint: Path, shards: Path, run_dir: Path) -> Path:
    """An untrained VLM on `tower_checkpoint` with a tiny LM, its weights scaled up so that its
    answers differ from image to image; saved (with its resolved config) as a run saves it."""
    from mmtrain.pipelines.inspection import iter_captions
    from mmtrain.training.config.schema import LanguageModelConfig, VisionEncoderConfig, VlmModelConfig, VlmRunConfig
    from mmtrain.training.models.language_model import make_tiny_lm
    from mmtrain.training.tasks.resolve import resolve_vlm
    from mmtrain.training.tasks.vlm import VlmTask

    lm = make_tiny_lm(Path(run_dir) / "lm", iter_captions([str(shards)]), vocab_size=400, hidden_size=64)
    cfg = VlmRunConfig(
        model=VlmModelConfig(
            vision=VisionEncoderConfig(checkpoint=str(tower_checkpoint)), lm=LanguageModelConfig(path=str(lm))
        ),
        data=DataConfig(train_shards=[str(shards)]),
        max_length=48,
    )
    cfg, _ = resolve_vlm(cfg)
    torch.manual_seed(0)
    model = VlmTask(cfg).build_model().eval()
    with torch.no_grad():
        for param in list(model.projector.parameters()) + list(model.lm.parameters()):
            param.normal_(0, 0.5)
    return save_checkpoint(Path(run_dir) / "checkpoint_000000", model, None, TrainState(), to_dict(cfg))
