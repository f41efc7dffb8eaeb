"""CLIP model stages for the Ray Data actor pool: each actor loads one replica of the model once.

Shapes: B = rows in a batch, E = embedding size, C = classes.
"""

from __future__ import annotations

import numpy as np
import torch

from mmtrain.inference.pool import source_columns
from mmtrain.inference.trained import TrainedRun, autocast, inference_device, load_trained_model
from mmtrain.pipelines import contract
from mmtrain.training.engine.inputs import to_tensor
from mmtrain.training.tasks.clip_eval import zero_shot_classifier


class ClipEmbedder:
    """Rows -> L2-normalised image and caption embeddings and their cosine (the CLIP score).

    Takes the run the driver found and checked (kind, intact checksums): a replica only loads it."""

    def __init__(self, run: TrainedRun, shard_paths: list[str], counter=None):
        self._device = inference_device()
        self._task, self._model = load_trained_model(run, self._device)
        self._shard_paths, self._counter = shard_paths, counter

    @torch.inference_mode()
    def embed(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(image_BE, text_BE), float32 on the device."""
        images = self._task.normalize(batch[contract.IMAGE], self._device)
        ids = to_tensor(batch[contract.INPUT_IDS]).to(self._device).long()
        mask = to_tensor(batch[contract.ATTENTION_MASK]).to(self._device).long()
        with autocast(self._device):
            image_BE = self._model.encode_image(images).float()
            text_BE = self._model.encode_text(ids, mask).float()
        return image_BE, text_BE

    def __call__(self, batch: dict) -> dict:
        image_BE, text_BE = self.embed(batch)
        out = source_columns(batch, self._shard_paths)
        out["image_embedding"] = image_BE.cpu().numpy()
        out["text_embedding"] = text_BE.cpu().numpy()
        out["clip_score"] = (image_BE * text_BE).sum(dim=1).cpu().numpy()
        self._count(len(out["key"]))
        return out

    def _count(self, rows: int) -> None:
        if self._counter is not None:
            self._counter.add.remote(rows)


class ZeroShotClassifier(ClipEmbedder):
    """Rows -> the class whose prompt embeddings (averaged over templates) are nearest the image,
    with its probability (softmax over classes at the model's own temperature)."""

    def __init__(self, run: TrainedRun, shard_paths: list[str], classes: list[str], templates: list[str], counter=None):

        super().__init__(run, shard_paths, counter)
        cfg = self._task.cfg
        with torch.inference_mode():
            self._classifier_CE = zero_shot_classifier(
                self._model, cfg.data.tokenizer, cfg.data.context_length, classes, templates, self._device
            )
        self._classes = np.asarray(classes)

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:
        images = self._task.normalize(batch[contract.IMAGE], self._device)
        with autocast(self._device):
            image_BE = self._model.encode_image(images).float()
        logits_BC = self._model.logit_scale.exp() * image_BE @ self._classifier_CE.T
        probability_BC = logits_BC.softmax(dim=1)
        score_B, predicted_B = probability_BC.max(dim=1)
        out = source_columns(batch, self._shard_paths)
        out["predicted"] = predicted_B.cpu().numpy()
        out["predicted_class"] = self._classes[out["predicted"]]
        out["score"] = score_B.cpu().numpy()
        out["class_scores"] = probability_BC.cpu().numpy()
        self._count(len(out["key"]))
        return out


class ImageEmbedder(ClipEmbedder):
    """Rows -> their key, label and L2-normalised image embedding (benchmarks: texts are embedded once,
    in the driver, not once per row)."""

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:
        images = self._task.normalize(batch[contract.IMAGE], self._device)
        with autocast(self._device):
            image_BE = self._model.encode_image(images).float()
        self._count(len(batch[contract.KEY]))
        return {
            "key": batch[contract.KEY],
            "position": batch[contract.POSITION],  # unique where keys may repeat across shards
            "label": batch[contract.LABEL],
            "image_embedding": image_BE.cpu().numpy(),
        }
