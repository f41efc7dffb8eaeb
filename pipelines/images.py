"""Decode and augment one image with PIL, staying in C for every pixel.

The crop box is chosen from the header size before decoding, so JPEGs much larger than the
crop decode at 1/2, 1/4 or 1/8 scale (libjpeg draft mode), and crop + resize is one PIL call.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image

from pipelines import bad_samples
from pipelines.config import AugmentConfig

Box = tuple[float, float, float, float]  # left, top, right, bottom in source pixels

# Our own max-pixels guard (read from the header) replaces PIL's decompression-bomb check.
Image.MAX_IMAGE_PIXELS = None


class BadSample(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse images over `max_pixels` before any decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except Exception:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... on junk bytes
        raise BadSample(bad_samples.NOT_AN_IMAGE) from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadSample(bad_samples.OVERSIZED_IMAGE)
    if width < 1 or height < 1:
        raise BadSample(bad_samples.NOT_AN_IMAGE)
    return image


def random_resized_crop_box(width: int, height: int, cfg: AugmentConfig, rng: np.random.Generator) -> Box:
    """Inception-style crop (as torchvision's RandomResizedCrop): area and aspect ratio in ranges."""
    area = width * height
    log_ratio = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*cfg.crop_scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = math.sqrt(target_area * aspect)
        crop_h = math.sqrt(target_area / aspect)
        if crop_w <= width and crop_h <= height:
            left = rng.uniform(0, width - crop_w)
            top = rng.uniform(0, height - crop_h)
            return (left, top, left + crop_w, top + crop_h)
    return center_crop_box(width, height, 1.0)


def center_crop_box(width: int, height: int, resize_ratio: float) -> Box:
    """Resize-shorter-side-then-centre-crop, expressed as a square box in source pixels."""
    side = min(width, height) * min(resize_ratio, 1.0)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def render(image: Image.Image, box: Box, size: int, flip: bool) -> np.ndarray:
    """Crop `box`, resize to size x size RGB, optionally flip: uint8 [H, W, 3]."""
    try:
        shrink = min(box[2] - box[0], box[3] - box[1]) / size
        if image.format == "JPEG" and shrink >= 2:
            reduce = 2 ** int(math.log2(min(shrink, 8)))
            full_width = image.size[0]
            image.draft("RGB", (math.ceil(image.size[0] / reduce), math.ceil(image.size[1] / reduce)))
            scale = image.size[0] / full_width
            box = tuple(v * scale for v in box)
        rgb = image.convert("RGB")
        out = rgb.resize((size, size), Image.Resampling.BILINEAR, box=box)
    except Exception:  # truncated or corrupt pixel data surfaces only when decoding
        raise BadSample(bad_samples.NOT_AN_IMAGE) from None
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


def decode_train(data: bytes, cfg: AugmentConfig, max_pixels: int, rng: np.random.Generator) -> np.ndarray:
    image = open_image(data, max_pixels)
    box = random_resized_crop_box(*image.size, cfg, rng)
    return render(image, box, cfg.image_size, flip=cfg.hflip and rng.random() < 0.5)


def decode_eval(data: bytes, cfg: AugmentConfig, max_pixels: int) -> np.ndarray:
    image = open_image(data, max_pixels)
    return render(image, center_crop_box(*image.size, cfg.eval_resize_ratio), cfg.image_size, flip=False)
