"""Asking a trained VLM: one image in the driver (`mmtrain ask`), or shards in the Ray Data actor
pool (`mmtrain caption`), both by batched greedy generation with the LM's KV cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmtrain.inference.pool import (
    PoolOptions,
    parquet_files,
    run_summary,
    source_columns,
    start_inference,
    write_manifest,
    write_parquet,
)
from mmtrain.inference.trained import (
    TrainedRun,
    autocast,
    decode_image_file,
    find_trained,
    inference_device,
    load_trained_model,
)
from mmtrain.pipelines import contract
from mmtrain.pipelines.conversations import CAPTION_PROMPT, IMAGE_PLACEHOLDER, ConversationEncoder
from mmtrain.pipelines.stages import SelectColumns

CAPTION_COLUMNS = (contract.IMAGE, contract.NUM_IMAGES, contract.LABEL, contract.KEY, contract.POSITION, "caption")


class Answerer:
    """A trained VLM that answers one question about images, a batch at a time: each prompt shows
    `images_per_prompt` images (one <image> placeholder each, first unless the question places them)."""

    def __init__(self, run: TrainedRun, question: str, max_new_tokens: int = 0, images_per_prompt: int = 1):
        if not question.strip():
            raise ValueError("the question is empty: ask something about the image")
        self.run = run
        self._device = inference_device()
        self._task, self._model = load_trained_model(self.run, self._device)
        self._encoder = ConversationEncoder(self._task.tokenizer, self._task.tower.num_patches, self.run.cfg.max_length)
        placed = question.count(IMAGE_PLACEHOLDER)
        if placed not in (0, images_per_prompt):
            raise ValueError(
                f"the question places {placed} {IMAGE_PLACEHOLDER} for {images_per_prompt} images: "
                f"place one per image, or none to show the images before the question"
            )
        # As trained: the image placeholders first (stage 1's caption prompt is the placeholder alone).
        turn = question if placed else f"{IMAGE_PLACEHOLDER}\n" * images_per_prompt + question
        # The reply is not part of the prompt; encode_prompt needs a conversation that has one.
        self._prompt = self._encoder.encode_prompt([{"from": "human", "value": turn}, {"from": "gpt", "value": ""}])
        self._max_new_tokens = max_new_tokens or self.run.cfg.eval.max_new_tokens
        self._images_per_prompt = images_per_prompt
        self.question = question

    def answer(self, images_NHWC: np.ndarray) -> list[str]:
        """uint8 images as the pipeline delivers them, `images_per_prompt` per prompt in order -> one
        answer per prompt."""
        images = self._task.normalize(images_NHWC, self._device)
        prompts = [self._prompt] * (len(images) // self._images_per_prompt)
        with torch.inference_mode(), autocast(self._device):
            answers = self._model.generate(
                images, prompts, self._max_new_tokens, self._encoder.stop_ids, self._encoder.pad_id
            )
        return [self._task.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answers]

    def answer_files(self, images: list[Path]) -> str:
        """The answer about image files, shown in the order given."""
        return self.answer(np.stack([decode_image_file(image, self.run.cfg.data) for image in images]))[0]


class CaptionStage:
    """The actor-pool stage of `mmtrain caption`: one VLM replica per actor. A row's first image is
    captioned; a text-only row has nothing to caption and gets an empty generation."""

    def __init__(self, run: TrainedRun, shard_paths: list[str], prompt: str, max_new_tokens: int, counter=None):
        self._answerer = Answerer(run, prompt, max_new_tokens)
        self._shard_paths, self._counter = shard_paths, counter

    def __call__(self, batch: dict) -> dict:
        out = source_columns(batch, self._shard_paths)
        out["prompt"] = np.full(len(out["key"]), self._answerer.question, dtype=object)
        generations = np.full(len(out["key"]), "", dtype=object)
        with_image = np.flatnonzero(np.asarray(batch[contract.NUM_IMAGES]) > 0)
        if len(with_image):
            generations[with_image] = self._answerer.answer(batch[contract.IMAGE][with_image, 0])
        out["generation"] = generations
        if self._counter is not None:
            self._counter.add.remote(len(out["key"]))
        return out


def caption(
    checkpoint: str | Path,
    specs: list[str],
    out_dir: Path,
    options: PoolOptions,
    prompt: str = CAPTION_PROMPT,
    max_new_tokens: int = 0,
) -> dict:
    """Writes OUT/*.parquet (key, shard, caption, label, prompt, generation) and OUT/_manifest.json."""
    if not prompt.strip():
        raise ValueError("--prompt is empty: give the instruction the model answers for each image")
    run = find_trained(checkpoint, "vlm", "caption")
    inference = start_inference(
        run,
        specs,
        CaptionStage,
        {"prompt": prompt, "max_new_tokens": max_new_tokens},
        options,
        text_stage=(SelectColumns, {}),
        columns=CAPTION_COLUMNS,
    )
    rows = write_parquet(inference, out_dir, "caption")
    manifest = {
        "kind": "mmtrain-generations",
        **run_summary(inference, run, specs, rows),
        "prompt": prompt,
        "files": [path.name for path in parquet_files(out_dir)],
    }
    write_manifest(out_dir, manifest)
    return manifest
