"""The CLIP trainer's task: model, optimizer groups, the loss on one batch, evaluation."""

from __future__ import annotations

import torch
from torch import nn

from pipelines import contract
from training.config import ClipRunConfig
from training.losses import infonce_loss, siglip_loss
from training.models.clip import ClipModel
from training.optim import param_groups


def images_to_model_input(images_BHWC: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B, H, W, C] -> normalised float [B, C, H, W] on `device` (the copy stays uint8)."""
    images = images_BHWC.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(contract.IMAGE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(contract.IMAGE_STD, device=device).view(1, 3, 1, 1)
    return (images - mean) / std


class ClipTask:
    train_columns = contract.TENSOR_COLUMNS
    eval_columns = contract.TENSOR_COLUMNS

    def __init__(self, cfg: ClipRunConfig):
        self.cfg = cfg
        self.eval_table: list[dict] = []  # CLIP has no generations to show
        # name -> (matrix, row labels, column labels, title, x label, y label), for figures.heatmap
        self.eval_pictures: dict[str, tuple] = {}
        self._caption_tokenizer = None

    @staticmethod
    def text_stage(cfg: ClipRunConfig, ledger=None):
        return None  # the pipeline's default: captions -> token ids with the caption tokenizer

    def build_model(self) -> ClipModel:
        return ClipModel(self.cfg.model, self.cfg.data.context_length, self.cfg.loss)

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups(model.named_parameters(), self.cfg.optim.weight_decay, self.cfg.optim.lr)

    def prepare_batch(self, batch: dict, device: torch.device) -> dict:
        return {
            contract.IMAGE: images_to_model_input(batch[contract.IMAGE], device),
            contract.INPUT_IDS: batch[contract.INPUT_IDS].to(device, non_blocking=True).long(),
            contract.ATTENTION_MASK: batch[contract.ATTENTION_MASK].to(device, non_blocking=True).long(),
        }

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        # Call the (possibly DDP-wrapped) module itself so gradient sync hooks run.
        image_BE, text_BE = model(batch[contract.IMAGE], batch[contract.INPUT_IDS], batch[contract.ATTENTION_MASK])
        clip = unwrap(model)
        if self.cfg.loss.kind == "siglip":
            loss = siglip_loss(image_BE.float(), text_BE.float(), clip.logit_scale, clip.logit_bias)
        else:
            loss = infonce_loss(image_BE.float(), text_BE.float(), clip.logit_scale)
        return loss, {}

    def after_optimizer_step(self, model: nn.Module) -> None:
        unwrap(model).clamp_logit_scale(self.cfg.loss.max_logit_scale)

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    def step_metrics(self, model: nn.Module) -> dict:
        return {"temperature": float(1.0 / unwrap(model).logit_scale.detach().exp())}

    def captions(self, batch: dict) -> list[str]:
        """The caption text of each row of a training batch (for the sample grid)."""
        from pipelines.tokenizer import load_tokenizer

        if self._caption_tokenizer is None:
            self._caption_tokenizer = load_tokenizer(self.cfg.data.tokenizer)
        ids, mask = batch[contract.INPUT_IDS], batch[contract.ATTENTION_MASK]
        return [self._caption_tokenizer.decode(row[row_mask.bool()].tolist()) for row, row_mask in zip(ids, mask)]

    def evaluate(self, model: nn.Module, eval_shard, device: torch.device, assets: dict) -> dict:
        """Zero-shot accuracy and retrieval recall over the whole eval set (all ranks take part)."""
        from training.evaluate import (embed_eval_set, retrieval_recall, zero_shot_accuracy, zero_shot_classifier,
                                       zero_shot_confusion)

        model = unwrap(model)
        eval_cfg = self.cfg.eval
        batches = eval_shard.iter_torch_batches(batch_size=eval_cfg.batch_size)
        image_NE, text_NE, labels_N = embed_eval_set(model, batches, device)
        metrics = {"eval_samples": image_NE.shape[0]}
        self.eval_pictures = {}
        if eval_cfg.retrieval:
            limit = eval_cfg.max_retrieval_samples
            metrics.update(retrieval_recall(image_NE[:limit], text_NE[:limit]))
            shown = min(16, image_NE.shape[0])
            labels = [str(i) for i in range(shown)]
            self.eval_pictures["retrieval_similarity"] = (
                (image_NE[:shown] @ text_NE[:shown].T).cpu().numpy(), labels, labels,
                "cosine similarity, first eval pairs (matches on the diagonal)", "caption", "image")
        if eval_cfg.zero_shot and assets.get("classes"):
            classes = assets["classes"]
            classifier = zero_shot_classifier(model, assets["tokenizer"], self.cfg.data.context_length,
                                              classes, assets["templates"], device)
            metrics.update(zero_shot_accuracy(image_NE, labels_N, classifier))
            self.eval_pictures["zero_shot_confusion"] = (
                zero_shot_confusion(image_NE, labels_N, classifier).cpu().numpy(), classes, classes,
                "zero-shot confusion (counts)", "predicted class", "true class")
        return metrics


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model
