"""A CLIP benchmark held in files (class folders, or a Karpathy JSON over images) prepared to run
inside a training run's own evaluation (`eval.benchmarks`): the file lists and texts, small enough
to travel to every worker; each worker decodes its share of the images.

The class names and templates are chosen here for `mmtrain eval clip --benchmark` too, so that both
paths prompt the model the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmtrain.evaluation import layouts, prompts
from mmtrain.evaluation.benchmark import Benchmark
from mmtrain.pipelines.config import AugmentConfig

IN_TRAINING_TASKS = ("zeroshot_classification", "zeroshot_retrieval")


def classnames_for(bench: Benchmark, folders: list[str], listed: list[str] = ()) -> list[str]:
    """The benchmark's own, else built in for its dataset, else `listed` (a shards manifest's), else
    the folder names ("golden_retriever" -> "golden retriever")."""
    names = list(bench.classnames) or prompts.builtin_classnames(bench.dataset or bench.name) or list(listed)
    names = names or [folder.replace("_", " ") for folder in folders]
    if not names:
        raise ValueError(f"benchmark {bench.name}: no class names; give `classnames:` in its benchmark.yaml")
    if folders and len(names) != len(folders):
        raise ValueError(
            f"benchmark {bench.name}: {len(names)} class names for {len(folders)} class folders (built-in names "
            f"are CLIP_benchmark's for a dataset of that name); list `classnames:` in a benchmark.yaml, in "
            "folder order"
        )
    return names


def templates_for(bench: Benchmark, listed: list[str] = ()) -> list[str]:
    """The benchmark's own, else built in for its dataset, else `listed`, else OpenAI's generic one."""
    return (
        list(bench.templates)
        or prompts.builtin_templates(bench.dataset or bench.name)
        or list(listed)
        or prompts.GENERIC_TEMPLATES
    )


@dataclass(frozen=True)
class FolderBenchmark:
    name: str
    task: str
    root: str
    files: tuple[str, ...]  # relative to root
    labels: tuple[int, ...] = ()  # classification: each file's class
    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    captions: tuple[str, ...] = ()  # retrieval: every caption, and each one's file number
    caption_image: tuple[int, ...] = ()
    recall_k: tuple[int, ...] = (1, 5, 10)


def prepare_folder_benchmark(bench: Benchmark) -> FolderBenchmark:
    """The files and texts of a class-folder or Karpathy benchmark; others are refused with why."""
    if bench.task not in IN_TRAINING_TASKS:
        raise ValueError(
            f"eval.benchmarks: {bench.name} is a {bench.task} benchmark; a training run evaluates "
            f"{' and '.join(IN_TRAINING_TASKS)} ones (run the rest with `mmtrain eval --benchmark`)"
        )
    root = Path(bench.data)
    if bench.task == "zeroshot_retrieval":
        files, captions, caption_image = layouts.read_karpathy(Path(bench.annotations), bench.split, bench.limit)
        return FolderBenchmark(
            bench.name, bench.task, str(root), tuple(files), captions=tuple(captions),
            caption_image=tuple(caption_image), recall_k=tuple(bench.recall_k),
        )  # fmt: skip
    files, labels, folders = layouts.class_folder_files(root)
    if not folders:
        raise ValueError(
            f"eval.benchmarks: {bench.name} reads {root}, which has no class folders (DIR/CLASS/*.jpg); "
            "shards are what data.eval_shards evaluates"
        )
    limit = bench.limit or len(files)
    return FolderBenchmark(
        bench.name, bench.task, str(root), tuple(files[:limit]), tuple(labels[:limit]),
        tuple(classnames_for(bench, folders)), tuple(templates_for(bench)),
    )  # fmt: skip


def read_benchmark_image(bench: FolderBenchmark, number: int, augment: AugmentConfig, max_pixels: int):
    """File `number` decoded as evaluation decodes images, or None when it cannot be (skipped)."""
    image = layouts.read_image(Path(bench.root), bench.files[number], augment, max_pixels)
    return None if isinstance(image, str) else image


def kept_captions(bench: FolderBenchmark, kept_images: np.ndarray) -> tuple[list[str], list[int]]:
    """The captions of the images that could be read, numbered by their place among those."""
    place = {int(image): i for i, image in enumerate(kept_images)}
    pairs = [(c, place[i]) for c, i in zip(bench.captions, bench.caption_image) if i in place]
    return [c for c, _ in pairs], [i for _, i in pairs]
