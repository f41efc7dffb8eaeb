"""The Hugging Face image processor that reproduces mmtrain's evaluation preprocessing, for exports.

mmtrain's eval path (pipelines/images.py: decode_eval) crops the centre square of side
min(W, H) x eval_resize_ratio and resizes it bilinearly to image_size (CLIP-style towers), or
resizes the whole image to image_size x image_size (SigLIP-style, eval_center_crop=false). The
processors below do the same in their own order (resize the shorter side to image_size / ratio,
then crop), bilinear both: where no resampling happens the pixels are equal; where it does, PIL's
and OpenCV's bilinear filters differ by a little (tests/unit/test_export_preprocessing.py).
"""

from __future__ import annotations

BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, as transformers' processors take it


def eval_image_processor(image_size: int, mean, std, center_crop: bool, resize_ratio: float):
    from transformers import CLIPImageProcessor, SiglipImageProcessor  # transformers: only when exporting

    if not center_crop:
        return SiglipImageProcessor(
            size={"height": image_size, "width": image_size},
            resample=BILINEAR,
            image_mean=list(mean),
            image_std=list(std),
            do_convert_rgb=True,
        )
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": round(image_size / resize_ratio)},
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        resample=BILINEAR,
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )
