"""Decode and augment one image, staying in C for every pixel.

The header is read first (PIL, lazily), so images over the pixel limit are refused before any
decoding and the crop box is chosen from the size alone: a JPEG much larger than its crop then
decodes at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), and only the crop is resized. OpenCV
decodes and resizes, straight into the caller's batch array when given one: on 256px JPEGs that
is 1.8-2.3x PIL's speed per image, PIL's resize being the slower half (benchmarks/RESULTS.md).
Images OpenCV cannot read are tried with PIL before being called bad. EXIF orientation is
ignored, as PIL and torchvision ignore it.

Where OpenCV is not installed (its 60 MB wheel did not fit the offline wheel bundle of the GPU host
we benchmark on) the same crops are rendered by PIL; DECODER says which is in use.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image

from mmtrain.pipelines import bad_samples
from mmtrain.pipelines.config import AugmentConfig

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})  # loose image files

Box = tuple[int, int, int, int]  # left, top, right, bottom in source pixels, right/bottom exclusive

try:
    import cv2
except ImportError:
    cv2 = None

DECODER = "opencv" if cv2 is not None else "pil"

# Our own max-pixels guard (read from the header) replaces PIL's decompression-bomb check.
Image.MAX_IMAGE_PIXELS = None
if cv2 is not None:
    # One image per CPU: the parallelism comes from the pipeline's processes, which OpenCV's own
    # threads would only oversubscribe.
    cv2.setNumThreads(1)
    _DECODE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    # The scale bits of IMREAD_REDUCED_*; the GRAYSCALE constants are those bits alone.
    _JPEG_SCALE_FLAGS = {
        1: 0,
        2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
        4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
        8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
    }


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
    """Inception-style crop, as torchvision's RandomResizedCrop: area and aspect ratio drawn from
    ranges, ten tries, then a central crop with the aspect ratio clamped to the range."""
    area = width * height
    log_ratio = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*cfg.crop_scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(rng.integers(0, width - crop_w + 1))
            top = int(rng.integers(0, height - crop_h + 1))
            return (left, top, left + crop_w, top + crop_h)
    crop_w, crop_h = width, height
    if width / height < cfg.crop_ratio[0]:
        crop_h = max(1, round(width / cfg.crop_ratio[0]))
    elif width / height > cfg.crop_ratio[1]:
        crop_w = max(1, round(height * cfg.crop_ratio[1]))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return (left, top, left + crop_w, top + crop_h)


def center_crop_box(width: int, height: int, resize_ratio: float) -> Box:
    """Resize-shorter-side-then-centre-crop, expressed as a square box in source pixels."""
    side = max(1, round(min(width, height) * min(resize_ratio, 1.0)))
    left, top = round((width - side) / 2), round((height - side) / 2)
    return (left, top, left + side, top + side)


def decode_rgb(data: bytes, image_format: str | None, reduce: int = 1) -> np.ndarray:
    """uint8 [H, W, 3]; a JPEG at 1/`reduce` scale. Raises BadSample on corrupt or truncated data."""
    flags = _DECODE_FLAGS | (_JPEG_SCALE_FLAGS[reduce] if image_format == "JPEG" else 0)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if pixels is not None:
        return pixels
    try:  # a format this OpenCV build lacks; truncated data fails here too
        return np.asarray(_pil_decode(Image.open(io.BytesIO(data)), reduce=1))
    except Exception:
        raise BadSample(bad_samples.NOT_AN_IMAGE) from None


def render(
    data: bytes, image: Image.Image, box: Box, size: int, flip: bool, out: np.ndarray | None = None
) -> np.ndarray:
    """Decode `data` (whose header is `image`), crop `box`, resize to size x size, optionally flip:
    uint8 [size, size, 3], written into `out` when given."""
    shrink = min(box[2] - box[0], box[3] - box[1]) / size
    reduce = 2 ** int(math.log2(min(shrink, 8))) if image.format == "JPEG" and shrink >= 2 else 1
    if out is None:
        out = np.empty((size, size, 3), np.uint8)
    if cv2 is None:
        out[...] = _render_pil(image, box, size, flip, reduce)
        return out
    width, height = image.size
    pixels = decode_rgb(data, image.format, reduce)
    if pixels.shape[:2] != (height, width):  # decoded at reduced scale: scale the box with it
        scale_y, scale_x = pixels.shape[0] / height, pixels.shape[1] / width
        left, top = int(box[0] * scale_x), int(box[1] * scale_y)
        box = (left, top, max(left + 1, round(box[2] * scale_x)), max(top + 1, round(box[3] * scale_y)))
    crop = pixels[box[1] : box[3], box[0] : box[2]]
    if flip:
        cv2.flip(cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR), 1, dst=out)
    else:
        cv2.resize(crop, (size, size), dst=out, interpolation=cv2.INTER_LINEAR)
    return out


def _pil_decode(image: Image.Image, reduce: int) -> Image.Image:
    """Decode to RGB, a JPEG at 1/`reduce` scale (libjpeg's draft mode)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if reduce > 1:
            image.draft("RGB", (math.ceil(image.size[0] / reduce), math.ceil(image.size[1] / reduce)))
        image = eight_bit(image)
        return image.convert("RGB") if image.mode != "RGB" else image


# PIL's modes for 16-bit (and 32-bit integer) greyscale, as 16-bit PNGs and TIFFs open.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def eight_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale scaled to 8 bits ('L'), as OpenCV does; other modes unchanged. PIL's own
    convert("RGB") clips such values at 255 instead, so a 16-bit image came out all white."""
    if image.mode not in _WIDE_GREY_MODES:
        return image
    pixels = np.asarray(image)
    return Image.fromarray((np.clip(pixels, 0, 65535) >> 8).astype(np.uint8), mode="L")


def _render_pil(image: Image.Image, box: Box, size: int, flip: bool, reduce: int) -> np.ndarray:
    try:
        full_width = image.size[0]
        rgb = _pil_decode(image, reduce)
        scale = rgb.size[0] / full_width
        out = rgb.resize((size, size), Image.Resampling.BILINEAR, box=tuple(v * scale for v in box))
    except Exception:  # truncated or corrupt pixel data surfaces only when decoding
        raise BadSample(bad_samples.NOT_AN_IMAGE) from None
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


def decode_train(
    data: bytes, cfg: AugmentConfig, max_pixels: int, rng: np.random.Generator, out: np.ndarray | None = None
) -> np.ndarray:
    image = open_image(data, max_pixels)
    box = random_resized_crop_box(*image.size, cfg, rng)
    return render(data, image, box, cfg.image_size, flip=cfg.hflip and rng.random() < 0.5, out=out)


def decode_eval(data: bytes, cfg: AugmentConfig, max_pixels: int, out: np.ndarray | None = None) -> np.ndarray:
    image = open_image(data, max_pixels)
    box = center_crop_box(*image.size, cfg.eval_resize_ratio) if cfg.eval_center_crop else (0, 0, *image.size)
    return render(data, image, box, cfg.image_size, flip=False, out=out)
