"""Load any HF `tokenizers` tokenizer, or train a small byte-level BPE on a dataset's captions."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, UNK, BOS, EOT = "[PAD]", "[UNK]", "[BOS]", "[EOT]"
PAD_CANDIDATES = (PAD, "<pad>", "<|endoftext|>", "</s>")


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    special_tokens: tuple[str, ...] = (PAD, UNK, BOS, EOT),
    wrap: bool = True,
    lowercase: bool = True,
) -> Tokenizer:
    """Byte-level BPE. With `wrap`, every sequence becomes [BOS] ... [EOT] (CLIP pools at EOT)."""
    tokenizer = Tokenizer(models.BPE())
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if wrap:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOT}",
            special_tokens=[(BOS, tokenizer.token_to_id(BOS)), (EOT, tokenizer.token_to_id(EOT))],
        )
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer.json file, or an HF model directory that holds one."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ValueError(
            f"no tokenizer at {path}: point data.tokenizer at a tokenizer.json or an HF model "
            "directory, or make one with `mmtrain data tokenizer --data SHARDS --out tokenizer.json`"
        )
    return Tokenizer.from_file(str(path))


def pad_token_id(tokenizer: Tokenizer) -> int:
    if tokenizer.padding:
        return tokenizer.padding["pad_id"]
    for token in PAD_CANDIDATES:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0


def configure_fixed_length(tokenizer: Tokenizer, context_length: int) -> Tokenizer:
    """Pad and truncate every encoding to exactly `context_length` tokens (specials kept)."""
    tokenizer.enable_truncation(max_length=context_length)
    tokenizer.enable_padding(length=context_length, pad_id=pad_token_id(tokenizer))
    return tokenizer


def resolve_tokenizer(cfg, shard_specs: list[str]) -> str:
    """data.tokenizer, else the tokenizer.json that `data synth`/`data convert` wrote beside the shards."""
    if cfg.tokenizer:
        return cfg.tokenizer
    first = shard_specs[0]
    if "://" not in first:
        candidate = (Path(first) if Path(first).is_dir() else Path(first).parent) / "tokenizer.json"
        if candidate.is_file():
            return str(candidate)
    raise ValueError(
        f"no tokenizer for {first}: set data.tokenizer to a tokenizer.json or HF model directory "
        "(make one with `mmtrain data tokenizer --data SHARDS --out tokenizer.json`)"
    )
