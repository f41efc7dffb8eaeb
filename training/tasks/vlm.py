"""The VLM trainer's task: model assembly and freezing, per-module learning rates, the loss on
one batch, and evaluation by greedy generation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from mmtrain.pipelines import contract, position
from mmtrain.pipelines.conversations import (
    IMAGE_PLACEHOLDER,
    ConversationEncoder,
    FirstExchange,
    first_exchange,
    parse_conversation,
    supervised_positions,
    supervised_token_count,
)
from mmtrain.pipelines.packing import filled_image_slots, pack_budget, segment_position_ids
from mmtrain.pipelines.stages import TokenizeConversations
from mmtrain.training.checkpoint.store import latest_checkpoint, read_model_state
from mmtrain.training.config.schema import VlmRunConfig
from mmtrain.training.engine.distributed import all_reduce_sum
from mmtrain.training.engine.inputs import ImageNormalizer, to_tensor, unwrap
from mmtrain.training.engine.loop import Autocast, NoSync, accumulate_token_weighted
from mmtrain.training.engine.optim import exempt_from_weight_decay, param_groups
from mmtrain.training.models.language_model import add_lora, load_lm
from mmtrain.training.models.vision_encoder import load_vision_encoder, tower_info
from mmtrain.training.models.vlm import VisionLanguageModel, build_projector
from mmtrain.training.tasks.protocol import Evaluation


class VlmTask:
    train_columns = contract.VLM_TENSOR_COLUMNS
    eval_columns = None  # keep the conversation text for generation

    def __init__(self, cfg: VlmRunConfig):
        if cfg.model.lm.lora.rank > 0 and cfg.lrs.lm == 0:
            raise ValueError(
                "model.lm.lora.rank > 0 trains LoRA adapters at lrs.lm, which is 0: set lrs.lm "
                "(e.g. 2e-4) or model.lm.lora.rank=0"
            )
        self.cfg = cfg
        self.tower = tower_info(cfg.model.vision.checkpoint)
        self.normalize = ImageNormalizer(self.tower.image_mean, self.tower.image_std)
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The LM's tokenizer (loaded with the model by build_model)."""
        return self._tokenizer

    @staticmethod
    def text_stage(cfg: VlmRunConfig, ledger=None, train: bool = False):
        image_tokens = tower_info(cfg.model.vision.checkpoint).num_patches
        packing = cfg.data.packing
        return (
            TokenizeConversations,
            dict(
                lm_path=cfg.model.lm.path,
                num_image_tokens=image_tokens,
                max_length=cfg.max_length,
                captions=cfg.stage == "captions",
                ledger=ledger,
                pack=pack_budget(packing, image_tokens, cfg.data.max_images_per_sample)
                if train and packing.enabled
                else None,
            ),
        )

    def build_model(self) -> VisionLanguageModel:
        vision = load_vision_encoder(self.tower, self.cfg.model.vision.feature_layer)
        lm, self._tokenizer = load_lm(self.cfg.model.lm.path)
        if self.lora:
            lm = add_lora(lm, self.cfg.model.lm.lora)
        projector_cfg = self.cfg.model.projector
        projector = build_projector(
            projector_cfg.type, self.tower.width, lm.config.hidden_size, projector_cfg.hidden_width
        )
        image_token_id = self._tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        model = VisionLanguageModel(vision, projector, lm, image_token_id)
        if self.cfg.init_from:
            self._load_projector(model, latest_checkpoint(self.cfg.init_from))
        for name, module in self.modules(model).items():
            if not (name == "lm" and self.lora):  # peft has frozen the LM and left its adapters trainable
                module.requires_grad_(getattr(self.cfg.lrs, name) > 0)
        for module in vision.unused_modules():  # a trained tower trains the blocks its features come from
            module.requires_grad_(False)
        self.train_mode(model)
        return model

    @property
    def lora(self) -> bool:
        return self.cfg.model.lm.lora.rank > 0

    def frozen_sources(self) -> dict[str, str]:
        """Frozen modules and the paths their weights come from: checkpoints reference them there
        instead of copying them (LoRA's base LM included; its adapters are saved)."""
        sources = {"vision": self.tower.path, "lm": self.cfg.model.lm.path}
        return {
            name: path
            for name, path in sources.items()
            if getattr(self.cfg.lrs, name) == 0 or (name == "lm" and self.lora)
        }

    def train_mode(self, model: nn.Module) -> None:
        """Train mode for learning modules only: frozen ones stay in eval mode (no dropout)."""
        model = unwrap(model)
        model.train()
        for name, module in self.modules(model).items():
            if getattr(self.cfg.lrs, name) == 0:
                module.eval()

    @staticmethod
    def modules(model: VisionLanguageModel) -> dict[str, nn.Module]:
        return {"vision": model.vision, "projector": model.projector, "lm": model.lm}

    @staticmethod
    def _load_projector(model: VisionLanguageModel, checkpoint: Path) -> None:
        state = read_model_state(checkpoint)
        projector_state = {k[len("projector.") :]: v for k, v in state.items() if k.startswith("projector.")}
        if not projector_state:
            raise ValueError(f"{checkpoint} holds no projector weights; init_from must be a VLM checkpoint")
        model.projector.load_state_dict(projector_state)

    def param_groups(self, model: VisionLanguageModel) -> list[dict]:
        groups, exempt = [], exempt_from_weight_decay(model)
        for name, module in self.modules(model).items():
            lr = getattr(self.cfg.lrs, name)
            if lr > 0:
                groups += param_groups(module, self.cfg.optim.weight_decay, lr, exempt)
        if not groups:
            raise ValueError("every module has learning rate 0: set lrs.projector (and lrs.lm for stage 2)")
        return groups

    def prepare_batch(self, batch: dict, device: torch.device) -> dict:
        """Tensors on the device. Numpy batches (evaluation) get the per-batch columns collation
        makes for training batches (pipelines/collate.py) here, from the host arrays."""
        image_index = batch.get(contract.IMAGE_INDEX)
        if image_index is None:
            image_index = torch.from_numpy(
                filled_image_slots(batch[contract.NUM_IMAGES], batch[contract.IMAGE].shape[1])
            )
        if contract.POSITION_IDS in batch and not isinstance(batch[contract.POSITION_IDS], torch.Tensor):
            batch = {**batch, contract.POSITION_IDS: segment_position_ids(batch[contract.POSITION_IDS])}
        images = to_tensor(batch[contract.IMAGE]).to(device, non_blocking=True)
        images = images.flatten(0, 1).index_select(0, image_index.to(device, non_blocking=True))
        out = {contract.IMAGE: self.normalize(images, device)}
        for column in (contract.INPUT_IDS, contract.LABELS):
            out[column] = to_tensor(batch[column]).to(device, non_blocking=True).long()
        position_ids = batch.get(contract.POSITION_IDS)
        if position_ids is not None:  # packed rows (collation drops it for one sequence per row)
            out[contract.POSITION_IDS] = to_tensor(position_ids).to(device, non_blocking=True).long()
        predicting = batch.get(contract.PREDICTING)
        if predicting is None:  # numpy batches (evaluation): the labels are still on the host
            predicting = torch.from_numpy(supervised_positions(batch[contract.LABELS]))
        out[contract.PREDICTING] = predicting.to(device, non_blocking=True)
        count = batch.get(contract.SUPERVISED_TOKENS)
        if count is None:  # as above: counted from the host's labels
            count = torch.tensor(supervised_token_count(to_tensor(batch[contract.LABELS]).numpy()))
        out[contract.SUPERVISED_TOKENS] = to_tensor(count).to(device, non_blocking=True)
        return out

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        """The batch's mean loss per supervised token."""
        return self.loss_sum(model, batch)[0] / batch[contract.SUPERVISED_TOKENS].clamp_min(1), {}

    def loss_sum(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        """The sum of the batch's supervised token losses."""
        loss = model(
            batch[contract.IMAGE],
            batch[contract.INPUT_IDS],
            batch[contract.LABELS],
            batch[contract.PREDICTING],
            position_ids_BL=batch.get(contract.POSITION_IDS),
            reduction="sum",
        )
        return loss, {}

    def forward_backward(
        self, model: nn.Module, micro_batches: list[dict], autocast: Autocast, no_sync: NoSync
    ) -> tuple[torch.Tensor, dict]:
        """One mean over every supervised token of the step (all micro-batches, all ranks)."""
        counts = [batch[contract.SUPERVISED_TOKENS] for batch in micro_batches]
        return accumulate_token_weighted(self.loss_sum, model, micro_batches, counts, autocast, no_sync)

    def after_optimizer_step(self, model: nn.Module) -> None:
        pass

    def step_metrics(self, model: nn.Module) -> dict:
        return {}

    def captions(self, batch: dict) -> list[str]:
        """For the sample grid: each row's question (the first line of the text between its image and
        its first supervised token) and what it is supervised to say (its unmasked label tokens)."""
        ids, labels = to_tensor(batch[contract.INPUT_IDS]), to_tensor(batch[contract.LABELS])
        image_token_id, shown = self._tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER), []
        for row_ids, row_labels in zip(ids, labels):
            answer = self._tokenizer.decode(row_labels[row_labels != -100].tolist(), skip_special_tokens=True)
            supervised = (row_labels != -100).nonzero().flatten()
            images = (row_ids == image_token_id).nonzero().flatten()
            start = int(images[-1]) + 1 if len(images) else 0
            end = int(supervised[0]) if len(supervised) else start
            prompt = self._tokenizer.decode(row_ids[start:end].tolist(), skip_special_tokens=True).strip()
            question = prompt.splitlines()[0] if prompt else ""
            shown.append(f"Q: {question} A: {answer.strip()}" if question else answer.strip())
        return shown

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict], device: torch.device, assets=None) -> dict:
        """Held-out loss and perplexity per supervised token, and exact match of greedy answers to
        the first question.
        `batches` are this rank's eval batches as numpy (the conversation text included)."""
        model = unwrap(model)
        encoder = ConversationEncoder(self._tokenizer, self.tower.num_patches, self.cfg.max_length)
        loss_sum, tokens = torch.zeros((), device=device), torch.zeros((), device=device)  # on the device
        matches, asked, table = 0, 0, []
        limits = assets.questions_per_shard if assets is not None else ()
        for batch in batches:
            prepared = self.prepare_batch(batch, device)
            loss_sum += self.loss_sum(model, prepared)[0].detach()
            tokens += prepared[contract.SUPERVISED_TOKENS]
            rows = self._first_questions(batch, limits, self.cfg.eval.max_generate_samples - asked)
            if not rows:
                continue
            prompts = [encoder.encode_prompt(exchange.prompt) for _, exchange in rows]
            shown = [(row, sum(m["content"].count(IMAGE_PLACEHOLDER) for m in ex.prompt)) for row, ex in rows]
            images = prepared[contract.IMAGE][self._images_of(shown, batch[contract.NUM_IMAGES])]
            answers = model.generate(images, prompts, self.cfg.eval.max_new_tokens, encoder.stop_ids, encoder.pad_id)
            for (row, exchange), answer_ids in zip(rows, answers):
                answer = self._tokenizer.decode(answer_ids, skip_special_tokens=True)
                correct = normalise(answer) == normalise(exchange.answer)
                matches, asked = matches + correct, asked + 1
                if len(table) < self.cfg.eval.table_rows:
                    table.append(
                        {
                            "key": str(batch[contract.KEY][row]),
                            "question": exchange.question,
                            "expected": exchange.answer,
                            "generated": answer,
                            "correct": bool(correct),
                        }
                    )
        totals = torch.stack(
            [
                loss_sum,
                tokens.float(),
                torch.tensor(float(matches), device=device),
                torch.tensor(float(asked), device=device),
            ]
        )
        all_reduce_sum(totals)
        loss = float(totals[0] / max(totals[1], 1))
        metrics = {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "exact_match": float(totals[2] / max(totals[3], 1)),
            "questions": int(totals[3]),
        }
        return Evaluation(metrics, table)

    @staticmethod
    def _images_of(shown: list[tuple[int, int]], num_images_B: np.ndarray) -> torch.Tensor:
        """Where the images each prompt shows are among the batch's images: for (row, k), the row's
        first k (a prompt up to the first reply shows the images placed before it)."""
        starts = np.cumsum(num_images_B) - num_images_B
        index = [np.arange(starts[row], starts[row] + k) for row, k in shown]
        return torch.from_numpy(np.concatenate(index).astype(np.int64) if index else np.zeros(0, np.int64))

    @staticmethod
    def _first_questions(batch: dict, limits: tuple[int, ...], budget: int) -> list[tuple[int, FirstExchange]]:
        """(row, first exchange) of the rows to ask: with `limits`, those among the first
        limits[shard] samples of their shard; without, the first `budget` rows."""
        if limits:
            _, shards, indices = position.unpack(batch[contract.POSITION])
            per_shard = np.append(np.asarray(limits), 0)  # a shard past the list asks nothing
            candidates = np.flatnonzero(indices < per_shard[np.minimum(shards, len(limits))])
        else:
            candidates = range(len(batch[contract.CONVERSATION]))
        rows = []
        for row in candidates:
            if not limits and len(rows) >= budget:
                break
            exchange = first_exchange(parse_conversation(str(batch[contract.CONVERSATION][row])))
            if exchange is not None:
                rows.append((int(row), exchange))
        return rows


def normalise(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())
