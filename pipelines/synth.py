"""A deterministic synthetic dataset a model can learn: coloured shapes with exact answers.

Each image holds 1-3 shapes of one kind and colour, all small or all large, grouped on the
left or right half. Each sample carries a caption ("two large red circles on the left.") and a
LLaVA-style conversation with questions about colour, shape, count, size and position.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmtrain.pipelines.shard_writer import ShardWriter, encode_json, encode_text, write_manifest

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
SHAPES = ("circle", "square", "triangle")
COUNTS = ("one", "two", "three")
SIZES = ("small", "large")
SIDES = ("left", "right")
QUESTIONS = {
    "colour": "What colour are the shapes?",
    "shape": "What kind of shape is shown?",
    "count": "How many shapes are there?",
    "size": "Are the shapes small or large?",
    "side": "Are the shapes on the left or the right?",
}
TEMPLATES = ("a photo of {}.", "a picture of {}.", "an image showing {}.")


def describe(shape: str, colour: str, count: int, size: str, side: str) -> str:
    noun = shape if count == 1 else f"{shape}s"
    article = "a" if count == 1 else COUNTS[count - 1]
    return f"{article} {size} {colour} {noun} on the {side}"


def make_sample(index: int, seed: int, image_size: int) -> dict:
    """One sample: JPEG bytes, caption, and metadata with the conversation and the shape label."""
    rng = np.random.default_rng([seed, index])
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape_id = int(rng.integers(len(SHAPES)))
    count = int(rng.integers(1, 4))
    size = SIZES[rng.integers(2)]
    side = SIDES[rng.integers(2)]
    image = _draw(rng, SHAPES[shape_id], COLOURS[colour], count, size, side, image_size)

    answers = {"colour": colour, "shape": SHAPES[shape_id], "count": COUNTS[count - 1], "size": size, "side": side}
    asked = rng.permutation(list(QUESTIONS))[: int(rng.integers(1, 3))]
    conversation = []
    for turn, topic in enumerate(asked):
        prefix = "<image>\n" if turn == 0 else ""
        conversation.append({"from": "human", "value": prefix + QUESTIONS[topic]})
        conversation.append({"from": "gpt", "value": answers[topic]})
    caption = TEMPLATES[index % len(TEMPLATES)].format(describe(SHAPES[shape_id], colour, count, size, side))

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return {
        "__key__": f"{index:08d}",
        "jpg": buffer.getvalue(),
        "txt": encode_text(caption),
        "json": encode_json(
            {"label": shape_id, "class_name": SHAPES[shape_id], "answers": answers, "conversations": conversation}
        ),
    }


def _draw(rng, shape, rgb, count, size, side, image_size) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(200, 256, size=3))
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    half = image_size // 2
    radius = image_size * (0.07 if size == "small" else 0.13)
    cell = image_size / 3  # stack up to three shapes vertically within one half
    x0 = 0 if side == "left" else half
    for slot in rng.permutation(3)[:count]:
        cx = x0 + half / 2 + rng.uniform(-0.2, 0.2) * half
        cy = cell * (slot + 0.5) + rng.uniform(-0.1, 0.1) * cell
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if shape == "circle":
            draw.ellipse(box, fill=rgb)
        elif shape == "square":
            draw.rectangle(box, fill=rgb)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=rgb)
    return image


def write_synth(
    out_dir: Path,
    num_train: int = 4000,
    num_val: int = 500,
    image_size: int = 64,
    seed: int = 0,
    shard_size: int = 1000,
    progress=None,
) -> dict:
    """Write train-*.tar and val-*.tar shards plus manifest.json; returns the manifest's split counts."""
    out_dir = Path(out_dir)
    shards = []
    for split, count, offset in (("train", num_train, 0), ("val", num_val, num_train)):
        with ShardWriter(out_dir, split, max_samples=shard_size) as writer:
            for index in range(offset, offset + count):
                writer.write(make_sample(index, seed, image_size))
                if progress:
                    progress(1)
        shards.extend(writer.shards)
    manifest = write_manifest(
        out_dir,
        shards,
        {
            "source": "synth",
            "seed": seed,
            "image_size": image_size,
            "classes": list(SHAPES),
            "templates": ["a photo of {}s."],
        },
    )
    return manifest["splits"]
