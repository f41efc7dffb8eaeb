"""What a run config leaves to its data and prerequisites, filled in before Ray starts: the
tokenizer and vocabulary, the eval classes and templates, the vision tower's image size and
preprocessing. A wrong path fails here in a second, with the key to fix."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from mmtrain.evaluation.benchmark import resolve_benchmarks
from mmtrain.evaluation.folder_benchmark import FolderBenchmark, prepare_folder_benchmark
from mmtrain.pipelines.config import AugmentConfig
from mmtrain.pipelines.sources import ShardList, count_shard_samples, resolve_mixture, resolve_shards
from mmtrain.pipelines.tokenizer import load_tokenizer, resolve_tokenizer
from mmtrain.training.checkpoint.store import latest_checkpoint
from mmtrain.training.config.schema import ClipRunConfig, VlmRunConfig
from mmtrain.training.models.hf_clip import pretrained_run_config
from mmtrain.training.models.hub import local_model_dir
from mmtrain.training.models.vision_encoder import tower_info
from mmtrain.training.tasks.protocol import EvalAssets


@dataclass(frozen=True)
class RunShards:
    """A run's shards, listed once (on s3, one LIST per prefix) and passed on to what reads them."""

    train: ShardList
    eval: ShardList | None


def list_shards(data) -> RunShards:
    """List the train and eval shards now, before Ray starts: a mistyped path or an S3 endpoint where
    nothing listens fails in a second with the setting to fix, not minutes into a run."""
    if data.sources:
        train = resolve_mixture(data.sources, data.s3_endpoint)
    elif not data.train_shards:
        raise ValueError(
            "data.train_shards is empty: point it at shards (dir, glob, brace pattern or s3://), "
            "or give data.sources (a mixture)"
        )
    else:
        train = resolve_shards(data.train_shards, data.s3_endpoint)
    return RunShards(train, resolve_shards(data.eval_shards, data.s3_endpoint) if data.eval_shards else None)


def resolve_clip(cfg: ClipRunConfig, shards: RunShards | None = None) -> tuple[ClipRunConfig, EvalAssets | None]:
    """Fill what the config leaves to the data: tokenizer path, vocab size, eval classes/templates."""
    if cfg.init_from:
        cfg = pretrained_run_config(cfg)
    data = cfg.data
    if shards is None:  # called alone (not by the driver, which listed them): fail on a bad path now
        list_shards(data)
    tokenizer = resolve_tokenizer(data, data.train_specs)
    data = dataclasses.replace(data, tokenizer=str(Path(tokenizer).resolve()) if "://" not in tokenizer else tokenizer)
    vocab = load_tokenizer(tokenizer).get_vocab_size()
    text = cfg.model.text
    if text.vocab_size == 0:
        text = dataclasses.replace(text, vocab_size=vocab)
    elif text.vocab_size < vocab:
        raise ValueError(f"model.text.vocab_size={text.vocab_size} is smaller than the tokenizer's {vocab}")
    model = dataclasses.replace(cfg.model, text=text)
    if model.vision.image_size != data.augment.image_size:
        raise ValueError(
            f"model.vision.image_size={model.vision.image_size} but data.augment.image_size="
            f"{data.augment.image_size}; set them equal"
        )
    cfg = dataclasses.replace(cfg, data=data, model=model)

    eval_assets = None
    if data.eval_shards:
        classes, templates = classes_and_templates(cfg)
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, classes=classes, templates=templates))
        eval_assets = EvalAssets(data.tokenizer, classes, templates, benchmarks=folder_benchmarks(cfg.eval.benchmarks))
    elif cfg.eval.benchmarks:
        raise ValueError("eval.benchmarks run with the run's evaluation: set data.eval_shards too")
    return cfg, eval_assets


def folder_benchmarks(specs: list[str]) -> tuple[FolderBenchmark, ...]:
    """eval.benchmarks resolved and listed in the driver: a mistyped one fails before Ray starts."""
    return tuple(prepare_folder_benchmark(bench) for spec in specs for bench in resolve_benchmarks(spec))


def clip_eval_assets(cfg: ClipRunConfig) -> EvalAssets:
    """For a saved checkpoint: the zero-shot classes and templates of cfg.data.eval_shards (their
    manifest or the config's classes file, not the classes the run saved) and the tokenizer."""
    unset = dataclasses.replace(cfg.eval, classes=[], templates=[])
    classes, templates = classes_and_templates(dataclasses.replace(cfg, eval=unset))
    return EvalAssets(cfg.data.tokenizer, classes, templates)  # its benchmarks: `mmtrain eval clip --benchmark`


def vlm_eval_assets(cfg: VlmRunConfig, eval_shards: ShardList | None = None) -> EvalAssets:
    """Which eval samples are asked their first question: the first eval.max_generate_samples in
    shard order (counted from the tar headers)."""
    counts = count_shard_samples(eval_shards or resolve_shards(cfg.data.eval_shards, cfg.data.s3_endpoint))
    left, asked = cfg.eval.max_generate_samples, []
    for count in counts:
        asked.append(min(count, left))
        left -= asked[-1]
    return EvalAssets(questions_per_shard=tuple(asked))


def classes_and_templates(cfg: ClipRunConfig) -> tuple[list[str], list[str]]:
    ev = cfg.eval
    manifest = manifest_near(cfg.data.eval_shards[0])
    classes = list(ev.classes)
    if not classes and ev.classes_file:
        classes = [line.strip() for line in Path(ev.classes_file).read_text().splitlines() if line.strip()]
    if not classes:
        classes = manifest.get("classes", [])
    templates = list(ev.templates) or manifest.get("templates") or ["a photo of a {}."]
    return classes, templates


def manifest_near(spec: str) -> dict:
    if "://" in spec:
        return {}
    path = Path(spec)
    directory = path if path.is_dir() else path.parent
    manifest = directory / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else {}


def resolve_vlm(cfg: VlmRunConfig, shards: RunShards | None = None) -> tuple[VlmRunConfig, EvalAssets | None]:
    """Check the prerequisites (vision tower, LM directory) and match the data to the vision tower:
    its image size, its eval resize policy (centre crop or not) and, on the device, its normalisation."""

    model = cfg.model
    if not model.vision.checkpoint:
        raise ValueError(
            "model.vision.checkpoint is empty: train a CLIP first (`mmtrain train clip --config "
            "conf/clip/synth.yaml`) and point at its run directory, or give a Hugging Face CLIP or "
            "SigLIP directory"
        )
    tower = tower_info(model.vision.checkpoint)
    model = dataclasses.replace(
        model, lm=dataclasses.replace(model.lm, path=local_model_dir(model.lm.path, "model.lm.path"))
    )
    if not (Path(model.lm.path) / "config.json").is_file():
        raise ValueError(
            f"model.lm.path={model.lm.path!r} is not an HF model directory: make one with "
            "`mmtrain models tiny-lm --data data/synth --out DIR` or `mmtrain models import-gguf`, or give "
            "a Hugging Face id"
        )
    if cfg.stage == "conversations" and not cfg.init_from:
        raise ValueError("stage 2 (stage: conversations) needs init_from: the stage-1 run or checkpoint directory")
    if cfg.init_from:
        latest_checkpoint(cfg.init_from)  # fail now, not inside a worker
    shards = shards or list_shards(cfg.data)
    asked = cfg.data.augment.image_size
    if asked not in (AugmentConfig().image_size, tower.image_size):  # set on purpose, and not what the tower takes
        raise ValueError(
            f"data.augment.image_size={asked}, but the vision tower at {tower.path} takes "
            f"{tower.image_size}x{tower.image_size} images: remove the key (the tower decides) "
            f"or set it to {tower.image_size}"
        )
    augment = dataclasses.replace(cfg.data.augment, image_size=tower.image_size, eval_center_crop=tower.center_crop)
    data = dataclasses.replace(cfg.data, augment=augment, with_conversations=True)
    model = dataclasses.replace(
        model,
        vision=dataclasses.replace(model.vision, checkpoint=tower.path),
        lm=dataclasses.replace(model.lm, path=str(Path(model.lm.path).resolve())),
    )
    init_from = str(latest_checkpoint(cfg.init_from).resolve()) if cfg.init_from else ""
    cfg = dataclasses.replace(cfg, data=data, model=model, init_from=init_from)
    return cfg, (vlm_eval_assets(cfg, shards.eval) if shards.eval else None)
