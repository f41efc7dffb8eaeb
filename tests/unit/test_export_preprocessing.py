"""Exported image processors reproduce mmtrain's evaluation preprocessing: equal pixels (1e-6)
where no resampling happens, for CLIP-style (centre crop, eval_resize_ratio) and SigLIP-style
(whole image) towers; within a tolerance where PIL and OpenCV resample (their bilinear filters
differ when shrinking)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mmtrain.pipelines.config import AugmentConfig
from mmtrain.pipelines.images import decode_eval
from mmtrain.training.engine.inputs import ImageNormalizer
from mmtrain.training.models.image_processors import eval_image_processor

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _image(height, width, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), Image.fromarray(pixels)


def _ours(data, size, center_crop, ratio):
    augment = AugmentConfig(image_size=size, eval_center_crop=center_crop, eval_resize_ratio=ratio)
    pixels = decode_eval(data, augment, max_pixels=10**8)
    return ImageNormalizer(MEAN, STD)(torch.from_numpy(pixels[None]), torch.device("cpu"))


def _theirs(image, size, center_crop, ratio):
    processor = eval_image_processor(size, MEAN, STD, center_crop, ratio)
    return processor(images=image, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize(
    "center_crop, ratio, shape",
    [
        (True, 1.0, (32, 32)),
        (True, 1.0, (32, 48)),
        (True, 0.875, (37, 37)),
        (True, 0.875, (37, 50)),
        (False, 1.0, (32, 32)),
    ],
)
def test_pixels_equal_where_nothing_is_resampled(center_crop, ratio, shape):
    data, image = _image(*shape)
    ours, theirs = _ours(data, 32, center_crop, ratio), _theirs(image, 32, center_crop, ratio)
    assert ours.shape == theirs.shape == (1, 3, 32, 32)
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("center_crop, ratio", [(True, 1.0), (True, 0.875), (False, 1.0)])
def test_resampled_pixels_agree_closely(center_crop, ratio):
    data, image = _image(96, 128, seed=1)
    smooth = Image.fromarray(np.asarray(image.resize((32, 24))).repeat(4, 0).repeat(4, 1))  # real images are smooth
    buffer = io.BytesIO()
    smooth.save(buffer, format="PNG")
    ours, theirs = _ours(buffer.getvalue(), 32, center_crop, ratio), _theirs(smooth, 32, center_crop, ratio)
    # PIL's bilinear antialiases when it shrinks, OpenCV's INTER_LINEAR does not: at this 3-4x
    # shrink they differ by ~0.08-0.10 on average in normalised units (~6/255 of a pixel value)
    assert (ours - theirs).abs().mean() < 0.15
