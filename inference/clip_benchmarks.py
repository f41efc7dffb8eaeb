"""CLIP benchmarks (`mmtrain eval clip --benchmark`): image embeddings from the batch-inference
actor pool (the robust reader: a corrupt image is skipped and counted), text embeddings in the
driver, metrics from mmtrain.evaluation (CLIP_benchmark's definitions).

Shapes: N = images, T = texts, E = embedding size, C = classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import ray
import torch

from mmtrain.evaluation import layouts
from mmtrain.evaluation.benchmark import Benchmark, settings_hash
from mmtrain.evaluation.clip_metrics import (
    classification_metrics,
    retrieval_metrics,
    zero_shot_logits,
    zero_shot_weights,
)
from mmtrain.evaluation.folder_benchmark import classnames_for, templates_for
from mmtrain.evaluation.linear_probe import linear_probe
from mmtrain.evaluation.report import BenchmarkResult
from mmtrain.inference.clip_stages import ImageEmbedder
from mmtrain.inference.pool import PoolOptions, start_inference
from mmtrain.inference.progress import ProgressPrinter
from mmtrain.inference.trained import TrainedRun, load_trained_model
from mmtrain.pipelines.image_folder import image_files
from mmtrain.training.tasks.clip_eval import text_encoder as clip_text_encoder
from mmtrain.training.tasks.resolve import manifest_near


def text_encoder(run: TrainedRun) -> Callable[[list[str]], torch.Tensor]:
    """The run's text tower in the driver: texts -> [T, E] normalised embeddings."""
    _, model = load_trained_model(run, torch.device("cpu"))
    return clip_text_encoder(model, run.cfg.data.tokenizer, run.cfg.data.context_length, torch.device("cpu"))


def image_embeddings(run: TrainedRun, data: str, options: PoolOptions, files=None, classes=()) -> tuple[dict, int]:
    """({key: (label, embedding)} of every good image, the number of bad ones skipped), through the
    actor pool. Keys are file names in a folder; in shards, where keys may repeat, sample positions."""
    inference = start_inference(run, [data], ImageEmbedder, {}, options, classes=list(classes), files=files)
    found = {}
    with ProgressPrinter(inference.counter, inference.total_samples, "benchmark images"):
        for batch in inference.dataset.iter_batches(batch_size=1024, batch_format="numpy"):
            keys = batch["key"] if inference.shards is None else batch["position"]
            for key, label, vector in zip(keys, batch["label"], batch["image_embedding"]):
                found[str(key)] = (int(label), vector)
    bad = ray.get(inference.ledger.summary.remote())["bad_total"]
    return found, bad


class SuiteImages:
    """The image embeddings a suite's benchmarks ask for, each distinct set of images embedded once:
    benchmarks that vary the prompts, the class names or the task over one dataset (a zero-shot
    and a linear probe on one test folder) pass its images through the pool once."""

    def __init__(self, run: TrainedRun, options: PoolOptions):
        self.run, self.options = run, options
        self._embedded: dict[tuple, tuple[dict, int]] = {}

    def __call__(self, data: str, files: list[str] | None = None, classes=()) -> tuple[dict, int]:
        key = (str(data), None if files is None else tuple(files), tuple(classes))
        if key not in self._embedded:
            self._embedded[key] = image_embeddings(self.run, data, self.options, files, classes)
        return self._embedded[key]


def _stack(found: dict, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    vectors = np.stack([found[k][1] for k in keys]) if keys else np.zeros((0, 0), np.float32)
    return torch.from_numpy(vectors), torch.tensor([found[k][0] for k in keys], dtype=torch.long)


def _require_images(bench: Benchmark, data: str, usable: int, bad: int, what: str = "images") -> None:
    """A benchmark with nothing to measure says so, where the metrics would fail on empty tensors."""
    if not usable:
        raise ValueError(
            f"benchmark {bench.name}: no {what} could be read from {data} ({bad} skipped as unreadable): "
            "check that the path holds the benchmark's images"
        )


def classification_inputs(bench: Benchmark, root: str) -> tuple[list[str] | None, list[str], list[str]]:
    """(files or None for shards, class folders (labels index these), class names shown to the model)."""
    path = Path(root)
    if path.is_dir() and image_files(path):
        files, _, folders = layouts.class_folder_files(path)
        if not folders:
            raise ValueError(f"benchmark {bench.name}: {root} has no class folders (DIR/CLASS/*.jpg)")
        return files, folders, classnames_for(bench, folders)
    # Shards that carry labels: the class list is their manifest's.
    return None, [], classnames_for(bench, [], manifest_near(root).get("classes") or [])


def zero_shot(bench: Benchmark, images: SuiteImages, encode) -> tuple[dict, int, dict]:
    files, folders, names = classification_inputs(bench, bench.data)
    files = files[: bench.limit] if files is not None and bench.limit else files
    found, bad = images(bench.data, files, folders)
    keys = sorted(k for k in found if found[k][0] >= 0)
    _require_images(bench, bench.data, len(keys), bad, "labelled images")
    image_NE, labels_N = _stack(found, keys)
    templates = templates_for(bench, manifest_near(bench.data).get("templates") or [])
    metrics = classification_metrics(zero_shot_logits(image_NE, zero_shot_weights(encode, names, templates)), labels_N)
    return metrics, len(keys), {"classnames": names, "templates": templates, "bad_samples": bad}


def retrieval(bench: Benchmark, images: SuiteImages, encode) -> tuple[dict, int, dict]:
    annotations = Path(bench.annotations)
    files, captions, caption_image = layouts.read_karpathy(annotations, bench.split, bench.limit)
    found, bad = images(bench.data, files)
    kept = [i for i, name in enumerate(files) if name in found]  # a corrupt image and its captions leave
    _require_images(bench, bench.data, len(kept), bad)
    renumber = {old: new for new, old in enumerate(kept)}
    texts = [(c, renumber[i]) for c, i in zip(captions, caption_image) if i in renumber]
    image_NE, _ = _stack(found, [files[i] for i in kept])
    text_TE = encode([c for c, _ in texts])
    text_image_T = torch.tensor([i for _, i in texts])
    metrics = retrieval_metrics(image_NE, text_TE, text_image_T, bench.recall_k)
    return metrics, len(kept), {"texts": len(texts), "bad_samples": bad}


def probe(bench: Benchmark, images: SuiteImages, encode) -> tuple[dict, int, dict]:
    train_files, train_folders, _ = classification_inputs(bench, bench.train_data)
    test_files, test_folders, _ = classification_inputs(bench, bench.data)
    if train_folders != test_folders:
        raise ValueError(f"benchmark {bench.name}: train and test have different class folders")
    train, bad_train = images(bench.train_data, train_files, train_folders)
    test, bad_test = images(bench.data, test_files, test_folders)
    _require_images(bench, bench.train_data, len(train), bad_train)
    _require_images(bench, bench.data, len(test), bad_test)
    train_NE, train_labels = _stack(train, sorted(train))
    test_NE, test_labels = _stack(test, sorted(test))
    metrics = linear_probe(train_NE, train_labels, test_NE, test_labels, len(train_folders))
    return metrics, len(test), {"train_samples": len(train), "bad_samples": bad_train + bad_test}


RUNNERS = {"zeroshot_classification": zero_shot, "zeroshot_retrieval": retrieval, "linear_probe": probe}


def run_clip_benchmark(bench: Benchmark, images: SuiteImages, encode) -> BenchmarkResult:
    metrics, samples, details = RUNNERS[bench.task](bench, images, encode)
    pinned = {**bench.settings(), **{k: details[k] for k in ("classnames", "templates") if k in details}}
    return BenchmarkResult(bench.name, bench.task, metrics, samples, settings_hash(pinned), {**pinned, **details})
