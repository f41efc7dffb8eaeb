"""A trained mmtrain VLM exported as a Hugging Face LLaVA: transformers' LlavaForConditionalGeneration
loads it and greedy generation gives the tokens mmtrain's own generation gives."""

import numpy as np
import pytest
import torch

from mmtrain.jobs.cli import main
from mmtrain.pipelines.conversations import ConversationEncoder
from mmtrain.training.checkpoint.store import save_checkpoint
from mmtrain.training.config.io import to_dict
from mmtrain.training.config.schema import (
    LanguageModelConfig,
    LoraConfig,
    ModuleLearningRates,
    ProjectorConfig,
    VisionEncoderConfig,
    VlmModelConfig,
    VlmRunConfig,
)
from mmtrain.training.engine.loop import TrainState
from mmtrain.training.tasks.vlm import VlmTask
from tests.unit.test_vision_encoders import save_hf_tower
from tests.unit.test_vlm import make_parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return make_parts(tmp_path_factory.mktemp("vlm"))


QUESTION = [{"from": "human", "value": "<image>\nwhat colour are the shapes?"}, {"from": "gpt", "value": "red"}]


def _saved_vlm(directory, tower, lm, projector="mlp2x_gelu", lora_rank=0):
    cfg = VlmRunConfig(
        stage="conversations",
        max_length=64,
        lrs=ModuleLearningRates(projector=1e-3, lm=1e-3),
        model=VlmModelConfig(
            vision=VisionEncoderConfig(checkpoint=str(tower)),
            projector=ProjectorConfig(type=projector),
            lm=LanguageModelConfig(path=str(lm), lora=LoraConfig(rank=lora_rank)),
        ),
    )
    task = VlmTask(cfg)
    model = task.build_model()
    torch.manual_seed(1)
    with torch.no_grad():  # "trained": the projector and LM (or its LoRA adapters) are not what they were built as
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    save_checkpoint(directory, model, None, TrainState(step=1), to_dict(cfg), frozen_sources=task.frozen_sources())
    return task, model


@pytest.mark.parametrize("tower_kind,lora_rank", [("mmtrain", 0), ("hf_siglip", 0), ("mmtrain", 4)])
def test_llava_export_generates_what_mmtrain_generates(parts, tmp_path, tower_kind, lora_rank):
    """With LoRA the checkpoint holds only the adapters; the export merges them into the LM."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    root, lm = parts
    tower = root / "clip" if tower_kind == "mmtrain" else save_hf_tower(tmp_path / "siglip", "siglip")
    task, model = _saved_vlm(tmp_path / "vlm", tower, lm, lora_rank=lora_rank)
    out = tmp_path / "llava"
    assert (
        main(["models", "export", "--checkpoint", str(tmp_path / "vlm"), "--out", str(out), "--format", "llava"]) == 0
    )
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<image>") == llava.config.image_token_index

    encoder = ConversationEncoder(task._tokenizer, task.tower.num_patches, 64)
    prompt = torch.tensor(encoder.encode_prompt(QUESTION))
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (1, 16, 16, 3), dtype=np.uint8))
    pixels = task.normalize(images, torch.device("cpu"))
    model.eval()
    with torch.no_grad():  # the same next-token distribution at every position, image positions included
        our_logits = model.lm(inputs_embeds=model.embed(pixels, prompt[None])).logits
        their_logits = llava(input_ids=prompt[None], pixel_values=pixels).logits
    assert torch.allclose(our_logits, their_logits, atol=1e-4)
    ours = model.generate(pixels, [prompt.tolist()], 8, encoder.stop_ids, encoder.pad_id)[0]
    with torch.no_grad():
        generated = llava.generate(
            input_ids=prompt[None],
            pixel_values=pixels,
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=sorted(encoder.stop_ids),
            pad_token_id=encoder.pad_id,
        )
    theirs = [t for t in generated[0, len(prompt) :].tolist() if t not in encoder.stop_ids]
    assert len(ours) >= 3 and theirs == ours


@pytest.mark.parametrize("projector", ["linear", "mlp3x_gelu"])
def test_a_projector_llava_lacks_is_refused(parts, tmp_path, projector, capsys):
    root, lm = parts
    _saved_vlm(tmp_path / "vlm", root / "clip", lm, projector=projector)
    export = ["models", "export", "--checkpoint", str(tmp_path / "vlm"), "--out", str(tmp_path / "out")]
    assert main(export + ["--format", "llava"]) == 2
    assert f"model.projector.type='{projector}' has no LLaVA equivalent" in capsys.readouterr().err


@pytest.mark.parametrize("tower_kind", ["mmtrain", "hf_siglip"])
def test_the_exported_processor_alone_gives_mmtrains_tokens_pixels_and_answer(parts, tmp_path, tower_kind):
    """Only transformers' own classes: AutoProcessor(images=..., text=...) then generate."""
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    root, lm = parts
    tower = root / "clip" if tower_kind == "mmtrain" else save_hf_tower(tmp_path / "siglip", "siglip")
    task, model = _saved_vlm(tmp_path / "vlm", tower, lm)
    out = tmp_path / "llava"
    assert (
        main(["models", "export", "--checkpoint", str(tmp_path / "vlm"), "--out", str(out), "--format", "llava"]) == 0
    )
    processor = AutoProcessor.from_pretrained(out)
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()

    image_array = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    text = processor.apply_chat_template(
        [{"role": "user", "content": QUESTION[0]["value"]}], add_generation_prompt=True, tokenize=False
    )
    inputs = processor(images=Image.fromarray(image_array), text=text, return_tensors="pt")
    encoder = ConversationEncoder(task._tokenizer, task.tower.num_patches, 64)
    prompt = encoder.encode_prompt(QUESTION)
    assert inputs["input_ids"][0].tolist() == prompt
    pixels = task.normalize(torch.from_numpy(image_array[None]), torch.device("cpu"))
    assert torch.allclose(inputs["pixel_values"], pixels, atol=1e-6)

    model.eval()
    ours = model.generate(pixels, [prompt], 8, encoder.stop_ids, encoder.pad_id)[0]
    assert len(ours) >= 3 and _llava_answer(llava, inputs, prompt, encoder) == ours


def test_a_two_image_question_generates_the_same_through_the_exported_processor(parts, tmp_path):
    """Multi-image: two <image> placeholders, two images, through AutoProcessor and
    LlavaForConditionalGeneration, give mmtrain's tokens, pixels and answer."""
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    root, lm = parts
    task, model = _saved_vlm(tmp_path / "vlm", root / "clip", lm)
    out = tmp_path / "llava"
    assert (
        main(["models", "export", "--checkpoint", str(tmp_path / "vlm"), "--out", str(out), "--format", "llava"]) == 0
    )
    processor = AutoProcessor.from_pretrained(out)
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()

    arrays = np.random.default_rng(1).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    question = [{"from": "human", "value": "<image>\n<image>\nwhat colour?"}, {"from": "gpt", "value": "red"}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": question[0]["value"]}], add_generation_prompt=True, tokenize=False
    )
    inputs = processor(images=[Image.fromarray(a) for a in arrays], text=text, return_tensors="pt")
    encoder = ConversationEncoder(task._tokenizer, task.tower.num_patches, 64)
    prompt = encoder.encode_prompt(question)
    assert inputs["input_ids"][0].tolist() == prompt
    assert prompt.count(encoder.image_token_id) == 2 * task.tower.num_patches
    pixels = task.normalize(torch.from_numpy(arrays), torch.device("cpu"))
    assert torch.allclose(inputs["pixel_values"], pixels, atol=1e-6)
    model.eval()
    ours = model.generate(pixels, [prompt], 8, encoder.stop_ids, encoder.pad_id)[0]
    assert len(ours) >= 3 and _llava_answer(llava, inputs, prompt, encoder) == ours


def _llava_answer(llava, inputs: dict, prompt: list[int], encoder) -> list[int]:
    """transformers' greedy answer to the processor's inputs, up to the first stop token."""
    with torch.no_grad():
        generated = llava.generate(
            **inputs,
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=sorted(encoder.stop_ids),
            pad_token_id=encoder.pad_id,
        )
    return [t for t in generated[0, len(prompt) :].tolist() if t not in encoder.stop_ids]


def test_the_registered_vlm_answers_through_mlflow_pyfunc(parts, tmp_path, monkeypatch):
    """tracking.register_model for a VLM: MLflow's own loader answers a question about an image
    with the words mmtrain's generation gives."""
    import io

    import mlflow.pyfunc
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from mmtrain.training.tasks.llava_export import export_llava
    from mmtrain.training.tracking.publish import register_exported

    root, lm = parts
    task, model = _saved_vlm(tmp_path / "vlm", root / "clip", lm)
    export_dir = export_llava(tmp_path / "vlm", tmp_path / "llava")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())).info.run_id
    assert register_exported(uri, run_id, export_dir, "vlm", "tiny-vlm", {"max_new_tokens": 8}) == 1
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    served = mlflow.pyfunc.load_model("models:/tiny-vlm/1")

    image_array = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(image_array).save(png, format="PNG")
    question = QUESTION[0]["value"].removeprefix("<image>\n")
    (answer,) = served.predict(pd.DataFrame({"image": [png.getvalue()], "question": [question]}))

    encoder = ConversationEncoder(task._tokenizer, task.tower.num_patches, 64)
    pixels = task.normalize(torch.from_numpy(image_array[None]), torch.device("cpu"))
    model.eval()
    ours = model.generate(pixels, [encoder.encode_prompt(QUESTION)], 8, encoder.stop_ids, encoder.pad_id)[0]
    assert len(ours) >= 3 and answer == task._tokenizer.decode(ours, skip_special_tokens=True)
