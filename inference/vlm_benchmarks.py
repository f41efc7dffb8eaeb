"""VLM benchmarks (`mmtrain eval vlm --benchmark`): each question's prompt is the benchmark's pinned
template, answered by greedy decoding in batches in the driver; scored by mmtrain.evaluation (the
official VQA accuracy, multiple-choice option extraction, COCO's CIDEr-D).

A question whose image cannot be read is skipped and counted; the metrics are over the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmtrain.evaluation import layouts
from mmtrain.evaluation.benchmark import Benchmark, settings_hash
from mmtrain.evaluation.choices import format_options, option_letters, picked_option
from mmtrain.evaluation.cider import cider
from mmtrain.evaluation.report import BenchmarkResult
from mmtrain.evaluation.vqa import vqa_accuracy
from mmtrain.inference.trained import TrainedRun, autocast, inference_device, load_trained_model
from mmtrain.pipelines.conversations import IMAGE_PLACEHOLDER, ConversationEncoder

QUESTIONS_PER_BATCH = 16
EXAMPLES_KEPT = 50  # per benchmark, in the report


class BenchmarkAnswerer:
    """A trained VLM answering prompts about images, a batch of questions at a time."""

    def __init__(self, run: TrainedRun):
        self.run = run
        self._device = inference_device()
        self._task, self._model = load_trained_model(run, self._device)
        self._encoder = ConversationEncoder(self._task.tokenizer, self._task.tower.num_patches, run.cfg.max_length)

    def answer(self, images: list[list[np.ndarray]], prompts: list[str], max_new_tokens: int) -> list[str]:
        """One answer per prompt; prompt i shows images[i] (placeholders first, as trained)."""
        encoded = []
        for shown, prompt in zip(images, prompts):
            turn = prompt if IMAGE_PLACEHOLDER in prompt else f"{IMAGE_PLACEHOLDER}\n" * len(shown) + prompt
            conversation = [{"from": "human", "value": turn}, {"from": "gpt", "value": ""}]
            encoded.append(self._encoder.encode_prompt(conversation))
        pixels = self._task.normalize(np.stack([image for shown in images for image in shown]), self._device)
        with torch.inference_mode(), autocast(self._device):
            answers = self._model.generate(
                pixels, encoded, max_new_tokens, self._encoder.stop_ids, self._encoder.pad_id
            )
        return [self._task.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answers]


def read_images(row: dict, root: Path, data) -> list[np.ndarray] | str:
    """The row's images decoded as the eval pipeline decodes them, or the reason one cannot be."""
    names = [row["image"]] if isinstance(row["image"], str) else row["image"]
    images = [layouts.read_image(root, name, data.augment, data.max_image_pixels) for name in names]
    return next((image for image in images if isinstance(image, str)), images)


def prompt_of(row: dict, template: str) -> str:
    options = format_options(row["options"]) if "options" in row else ""
    return template.replace("{question}", row.get("question", "")).replace("{options}", options)


def score(task: str, row: dict, answer: str) -> tuple[float, str]:
    """(this answer's score, what it was scored against, as shown in the report)."""
    if task == "vqa":
        return vqa_accuracy(answer, row["answers"]), " | ".join(row["answers"])
    if task == "multiple_choice":
        expected = row["answer"]
        letters = option_letters(row["options"])
        expected = letters[expected] if isinstance(expected, int) else expected.strip().upper()
        return float(picked_option(answer, row["options"]) == expected), expected
    return 0.0, " | ".join(row["captions"])  # captioning: scored over the whole set (CIDEr)


def run_vlm_benchmark(answerer: BenchmarkAnswerer, bench: Benchmark) -> BenchmarkResult:
    settings = bench.settings()
    annotations = Path(bench.annotations)
    rows = layouts.read_questions(annotations, bench.limit)
    for number, row in enumerate(rows):
        layouts.check_question(row, bench.task, f"{annotations} question {number}")
    root, data_cfg = Path(bench.data), answerer.run.cfg.data
    answered, bad = [], {}
    for start in range(0, len(rows), QUESTIONS_PER_BATCH):
        batch = []
        for row in rows[start : start + QUESTIONS_PER_BATCH]:
            images = read_images(row, root, data_cfg)
            if isinstance(images, str):
                bad[images] = bad.get(images, 0) + 1
            else:
                batch.append((row, images))
        if batch:
            prompts = [prompt_of(row, settings["prompt"]) for row, _ in batch]
            answers = answerer.answer([images for _, images in batch], prompts, settings["max_new_tokens"])
            answered += [(row, prompt, answer) for (row, _), prompt, answer in zip(batch, prompts, answers)]
    if not answered:
        raise ValueError(f"benchmark {bench.name}: no question's images could be read under {root} ({bad})")
    scored = [(row, prompt, answer, *score(bench.task, row, answer)) for row, prompt, answer in answered]
    metrics = task_metrics(bench.task, scored)
    examples = [
        {"prompt": prompt, "expected": expected, "generated": answer, "score": value}
        for _, prompt, answer, value, expected in scored[:EXAMPLES_KEPT]
    ]
    return BenchmarkResult(
        bench.name,
        bench.task,
        metrics,
        len(answered),
        settings_hash(settings),
        {**settings, "bad_samples": bad},
        examples,
    )


def task_metrics(task: str, scored: list[tuple]) -> dict:
    if task == "captioning":
        corpus, _ = cider([answer for _, _, answer, _, _ in scored], [row["captions"] for row, *_ in scored])
        return {"cider": corpus}
    values = [value for _, _, _, value, _ in scored]
    if task == "vqa":
        return {"vqa_accuracy": sum(values) / len(values)}
    unparsed = sum(picked_option(answer, row["options"]) == "" for row, _, answer, _, _ in scored)
    return {"mc_accuracy": sum(values) / len(values), "mc_unparsed": unparsed / len(scored)}
