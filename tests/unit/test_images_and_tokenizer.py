import io

import numpy as np
import pytest
from PIL import Image

from mmtrain.pipelines import images
from mmtrain.pipelines.config import AugmentConfig
from mmtrain.pipelines.images import BadSample, center_crop_box, decode_eval, decode_train, random_resized_crop_box
from mmtrain.pipelines.tokenizer import configure_fixed_length, pad_token_id, train_bpe_tokenizer


@pytest.fixture(params=["opencv", "pil"], autouse=True)
def decoder(request, monkeypatch):
    """Every test here runs with OpenCV and with the PIL fallback used where OpenCV is missing."""
    if request.param == "pil":
        monkeypatch.setattr(images, "cv2", None)
    return request.param


def _jpeg(w, h):
    buffer = io.BytesIO()
    gradient = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
    Image.fromarray(np.stack([gradient] * 3, -1)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_train_and_eval_shapes_and_dtype():
    cfg = AugmentConfig(image_size=24)
    rng = np.random.default_rng(0)
    for data in (_jpeg(100, 60), _jpeg(20, 30)):
        assert decode_train(data, cfg, 10**7, rng).shape == (24, 24, 3)
        out = decode_eval(data, cfg, 10**7)
        assert out.shape == (24, 24, 3) and out.dtype == np.uint8


def test_draft_mode_matches_full_decode():
    """A big JPEG decoded at reduced scale gives nearly the same pixels as a full decode."""
    data = _jpeg(1024, 1024)
    cfg = AugmentConfig(image_size=64)
    fast = decode_eval(data, cfg, 10**8).astype(float)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.BILINEAR), float)
    assert np.abs(fast - full).mean() < 4.0


def test_crop_boxes_stay_inside():
    cfg = AugmentConfig(crop_scale=(0.08, 1.0))
    rng = np.random.default_rng(1)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(50, 80, cfg, rng)
        assert 0 <= left < right <= 50 and 0 <= top < bottom <= 80
    assert center_crop_box(100, 50, 1.0) == (25.0, 0.0, 75.0, 50.0)


def test_guards():
    with pytest.raises(BadSample, match="oversized_image"):
        decode_eval(_jpeg(300, 300), AugmentConfig(), max_pixels=300 * 299)
    with pytest.raises(BadSample, match="not_an_image"):
        decode_eval(b"\x89PNG but not really", AugmentConfig(), 10**7)
    truncated = _jpeg(200, 200)[:300]
    with pytest.raises(BadSample, match="not_an_image"):
        decode_eval(truncated, AugmentConfig(), 10**7)


def _encoded(array, image_format, **save_args):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **save_args)
    return buffer.getvalue()


def test_decoding_writes_into_the_callers_row_and_matches_pil():
    """The row of a batch array is filled in place; pixels agree with PIL's decode + resize."""
    rng = np.random.default_rng(3)
    smooth = np.clip(np.linspace(0, 255, 96)[None, :, None] + rng.normal(0, 3, (64, 96, 3)), 0, 255).astype(np.uint8)
    data = _encoded(smooth, "JPEG", quality=95)
    batch = np.zeros((3, 32, 32, 3), np.uint8)
    returned = decode_eval(data, AugmentConfig(image_size=32), 10**7, out=batch[1])
    assert np.shares_memory(returned, batch) and batch[1].any()
    assert not batch[0].any() and not batch[2].any()
    reference = np.asarray(
        Image.open(io.BytesIO(data)).convert("RGB").crop((16, 0, 80, 64)).resize((32, 32), Image.BILINEAR), float
    )
    assert np.abs(batch[1].astype(float) - reference).mean() < 4.0


def test_flip_mirrors_the_crop():
    """With the crop fixed to the whole image, a flipped train sample is the eval sample mirrored."""
    array = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    data = _encoded(array, "PNG")
    cfg = AugmentConfig(image_size=40, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=True)
    plain = decode_eval(data, cfg, 10**7)
    assert np.array_equal(plain, array)  # same size, lossless: no resampling
    seen = {"flipped": 0, "plain": 0}
    rng = np.random.default_rng(0)
    for _ in range(40):
        out = decode_train(data, cfg, 10**7, rng)
        if np.array_equal(out, plain[:, ::-1]):
            seen["flipped"] += 1
        elif np.array_equal(out, plain):
            seen["plain"] += 1
    assert seen["flipped"] > 5 and seen["plain"] > 5 and sum(seen.values()) == 40


@pytest.mark.parametrize(
    "image_format,mode",
    [
        ("PNG", "RGBA"),
        ("PNG", "L"),
        ("PNG", "P"),
        ("GIF", "P"),
        ("WEBP", "RGB"),
        ("JPEG", "L"),
        ("JPEG", "CMYK"),
        ("PCX", "RGB"),
    ],
)  # PCX: OpenCV cannot, PIL can
def test_every_common_format_and_mode_becomes_rgb(image_format, mode):
    buffer = io.BytesIO()
    Image.new(mode, (30, 20), 100).save(buffer, format=image_format)
    out = decode_eval(buffer.getvalue(), AugmentConfig(image_size=16), 10**7)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_a_truncated_jpeg_body_is_bad():
    data = _jpeg(200, 200)
    with pytest.raises(BadSample, match="not_an_image"):
        decode_train(data[: len(data) // 2], AugmentConfig(), 10**7, np.random.default_rng(0))


def test_tokenizer_pads_truncates_and_wraps():
    tokenizer = train_bpe_tokenizer(["a photo of a red circle", "a blue square"] * 20, vocab_size=300)
    configure_fixed_length(tokenizer, 8)
    short, long = tokenizer.encode_batch(["a red circle", "a photo of a red circle " * 5])
    assert len(short.ids) == len(long.ids) == 8
    assert short.ids[0] == tokenizer.token_to_id("[BOS]")
    last = sum(short.attention_mask) - 1
    assert short.ids[last] == tokenizer.token_to_id("[EOT]")
    assert short.ids[-1] == pad_token_id(tokenizer)
    assert long.ids[-1] == tokenizer.token_to_id("[EOT]")  # truncation keeps the end token
