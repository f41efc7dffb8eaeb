"""Shrink images once, at conversion, so that training decodes fewer pixels every epoch.

Decoding costs in proportion to the pixels stored, not to the 224px crop trained on: a 512px
JPEG takes ~3x the CPU of a 256px one to decode, every epoch (benchmarks/RESULTS.md). Datasets
for CLIP are therefore usually stored with a fixed shorter side (img2dataset's `--image_size`).
Images already at or under the size keep their original bytes.
"""

from __future__ import annotations

import io

from PIL import Image

from mmtrain.pipelines import bad_samples
from mmtrain.pipelines.images import BadSample, eight_bit, open_image


def shrink(data: bytes, shorter_side: int, quality: int, max_pixels: int) -> bytes | None:
    """A JPEG of the image with its shorter side scaled down to `shorter_side`, or None when it is
    no bigger than that (keep `data`). Raises BadSample when the image cannot be read."""
    image = open_image(data, max_pixels)  # header only: refuses junk and decompression bombs
    width, height = image.size
    if min(width, height) <= shorter_side:
        return None
    scale = shorter_side / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    try:
        # A JPEG decodes at the smallest 1/2-1/8 DCT scale still at least `size`: far less work.
        image.draft("RGB", size)
        image = eight_bit(image)  # 16-bit greyscale would otherwise clip to white
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        # Antialiased, as a downscale should be; reducing_gap box-reduces first, for speed.
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    except Exception:  # truncated or corrupt pixel data surfaces only when decoding
        raise BadSample(bad_samples.NOT_AN_IMAGE) from None
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
