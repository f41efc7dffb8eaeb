"""The CLIP trainer's task: model, optimizer groups, the loss on a batch (with feature-cached
gradient accumulation), evaluation."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable

import torch
from torch import nn

from mmtrain.pipelines import contract
from mmtrain.pipelines.tokenizer import load_tokenizer
from mmtrain.training.config.schema import ClipRunConfig
from mmtrain.training.engine.distributed import full_tensor
from mmtrain.training.engine.inputs import ImageNormalizer, to_tensor, unwrap
from mmtrain.training.engine.loop import Autocast, NoSync, accumulate_independently
from mmtrain.training.engine.losses import infonce_loss, siglip_loss
from mmtrain.training.engine.optim import exempt_from_weight_decay, param_groups
from mmtrain.training.models.clip import ClipModel
from mmtrain.training.models.hf_clip import load_pretrained
from mmtrain.training.tasks.clip_eval import (
    embed_eval_set,
    folder_benchmark_metrics,
    retrieval_recall,
    zero_shot_accuracy,
    zero_shot_classifier,
    zero_shot_confusion,
)
from mmtrain.training.tasks.protocol import Evaluation
from mmtrain.training.tracking.figures import HeatmapSpec


class ClipTask:
    train_columns = contract.TENSOR_COLUMNS
    eval_columns = contract.TENSOR_COLUMNS

    def __init__(self, cfg: ClipRunConfig):
        self.cfg = cfg
        self.normalize = ImageNormalizer(cfg.model.vision.image_mean, cfg.model.vision.image_std)
        self._caption_tokenizer = None

    @staticmethod
    def text_stage(cfg: ClipRunConfig, ledger=None, train: bool = False):
        return None  # the pipeline's default: captions -> token ids with the caption tokenizer

    def build_model(self) -> ClipModel:
        model = ClipModel(self.cfg.model, self.cfg.data.context_length, self.cfg.loss)
        if self.cfg.init_from:  # fine-tuning: start from a pretrained CLIPModel's weights
            load_pretrained(model, self.cfg.init_from)
        return model

    def frozen_sources(self) -> dict[str, str]:
        return {}  # every CLIP weight is saved

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups(model, self.cfg.optim.weight_decay, self.cfg.optim.lr, exempt_from_weight_decay(model))

    def prepare_batch(self, batch: dict, device: torch.device) -> dict:
        return {
            contract.IMAGE: self.normalize(batch[contract.IMAGE], device),
            contract.INPUT_IDS: to_tensor(batch[contract.INPUT_IDS]).to(device, non_blocking=True).long(),
            contract.ATTENTION_MASK: to_tensor(batch[contract.ATTENTION_MASK]).to(device, non_blocking=True).long(),
        }

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        # Call the (possibly DDP-wrapped) module itself so gradient sync hooks run.
        image_BE, text_BE = model(*_model_inputs(batch))
        return self._contrastive(unwrap(model), image_BE.float(), text_BE.float(), learn_temperature=True), {}

    def forward_backward(
        self, model: nn.Module, micro_batches: list[dict], autocast: Autocast, no_sync: NoSync
    ) -> tuple[torch.Tensor, dict]:
        if len(micro_batches) == 1:
            return accumulate_independently(self.loss, model, micro_batches, autocast, no_sync)
        return self._accumulate_with_cached_features(model, micro_batches, autocast, no_sync)

    def _accumulate_with_cached_features(self, model, micro_batches, autocast, no_sync):
        """N micro-batches of B as one batch of N x B (open_clip's accum_freq, GradCache): embed all
        without gradient, then re-embed each with gradient and backward the loss over the whole
        accumulated batch, the other micro-batches' features fixed. Each row's gradient then comes
        from all N x B negatives, as in one big batch. Assumes the forward is deterministic (no
        dropout), so the re-embedded features equal the cached ones."""
        with torch.no_grad(), autocast():
            cached = [model(*_model_inputs(batch)) for batch in micro_batches]
        images = [image.float() for image, _ in cached]
        texts = [text.float() for _, text in cached]
        clip, last = unwrap(model), len(micro_batches) - 1
        for index, batch in enumerate(micro_batches):
            with no_sync() if index < last and no_sync is not None else nullcontext():
                with autocast():
                    image_BE, text_BE = model(*_model_inputs(batch))
                all_images = torch.cat(images[:index] + [image_BE.float()] + images[index + 1 :])
                all_texts = torch.cat(texts[:index] + [text_BE.float()] + texts[index + 1 :])
                # The temperature's gradient is taken once, in the last (synchronised) backward.
                loss = self._contrastive(clip, all_images, all_texts, learn_temperature=index == last)
                loss.backward()
        return loss.detach(), {}

    def _contrastive(self, clip: ClipModel, image_BE, text_BE, learn_temperature: bool) -> torch.Tensor:
        scale, bias = clip.logit_scale, clip.logit_bias
        if not learn_temperature:
            scale, bias = scale.detach(), bias.detach()
        if self.cfg.loss.kind == "siglip":
            return siglip_loss(image_BE, text_BE, scale, bias)
        return infonce_loss(image_BE, text_BE, scale)

    def after_optimizer_step(self, model: nn.Module) -> None:
        unwrap(model).clamp_logit_scale(self.cfg.loss.max_logit_scale)

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    def step_metrics(self, model: nn.Module) -> dict:
        return {"temperature": float(1.0 / full_tensor(unwrap(model).logit_scale.detach()).exp())}

    def captions(self, batch: dict) -> list[str]:
        """The caption text of each row of a training batch (for the sample grid)."""

        if self._caption_tokenizer is None:
            self._caption_tokenizer = load_tokenizer(self.cfg.data.tokenizer)
        ids, mask = batch[contract.INPUT_IDS], batch[contract.ATTENTION_MASK]
        return [self._caption_tokenizer.decode(row[row_mask.bool()].tolist()) for row, row_mask in zip(ids, mask)]

    def _short_captions(self, batch: dict, count: int, width: int = 32) -> list[str]:
        rows = {key: to_tensor(batch[key])[:count] for key in (contract.INPUT_IDS, contract.ATTENTION_MASK)}
        return [caption if len(caption) <= width else caption[: width - 1] + "…" for caption in self.captions(rows)]

    def evaluate(self, model: nn.Module, batches: Iterable[dict], device: torch.device, assets) -> dict:
        """Zero-shot accuracy and retrieval recall over the whole eval set (all ranks take part).
        `batches` are this rank's eval batches; `assets` an EvalAssets (classes, templates, tokenizer)."""

        model = unwrap(model)
        eval_cfg = self.cfg.eval
        first: list[dict] = []  # this rank's first batch: rank 0's rows lead the gathered eval set
        image_NE, text_NE, labels_N = embed_eval_set(model, _keep_first(batches, first), device, self.normalize)
        metrics, pictures = {"eval_samples": image_NE.shape[0]}, {}
        if eval_cfg.retrieval:
            limit = eval_cfg.max_retrieval_samples
            metrics.update(retrieval_recall(image_NE[:limit], text_NE[:limit]))
            shown = min(16, image_NE.shape[0])
            captions = self._short_captions(first[0], shown) if first else []
            labels = captions if len(captions) == shown else [str(i) for i in range(shown)]
            pictures["retrieval_similarity"] = HeatmapSpec(
                (image_NE[:shown] @ text_NE[:shown].T).cpu().numpy(),
                [f"image of: {c}" for c in labels],
                labels,
                "cosine similarity, first eval pairs (matches on the diagonal)",
                "caption",
                "image",
            )
        if eval_cfg.zero_shot and assets.classes:
            classifier = zero_shot_classifier(
                model, assets.tokenizer, self.cfg.data.context_length, assets.classes, assets.templates, device
            )
            metrics.update(zero_shot_accuracy(image_NE, labels_N, classifier))
            pictures["zero_shot_confusion"] = HeatmapSpec(
                zero_shot_confusion(image_NE, labels_N, classifier).cpu().numpy(),
                assets.classes,
                assets.classes,
                "zero-shot confusion (counts)",
                "predicted class",
                "true class",
            )
        for bench in assets.benchmarks:
            metrics.update(
                folder_benchmark_metrics(model, bench, self.cfg.data, device, self.normalize, eval_cfg.batch_size)
            )
        return Evaluation(metrics, pictures=pictures)


def _keep_first(batches: Iterable[dict], first: list[dict]):
    for batch in batches:
        if not first:
            first.append(batch)
        yield batch


def _model_inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch[contract.IMAGE], batch[contract.INPUT_IDS], batch[contract.ATTENTION_MASK]
