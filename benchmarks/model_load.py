"""How long loading a trained CLIP takes, as an inference replica loads it (one thread): the model
built with its random initialisation and then loaded, against `load_trained_model`, which skips the
initialisation the checkpoint overwrites. Alternates the two after an untimed warm-up, checks that
both hold the same weights, and writes JSON.

    python -m benchmarks.model_load --preset vit_b32 --out benchmarks/results/model_load_vit_b32.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import write_report
from benchmarks.embed_throughput import make_checkpoint


def load_with_initialisation(run):
    from mmtrain.training.checkpoint.store import load_checkpoint
    from mmtrain.training.tasks.registry import trainer

    model = trainer(run.kind).task(run.cfg).build_model()
    load_checkpoint(run.checkpoint, model)
    return model


def load_as_inference_does(run):
    from mmtrain.inference.trained import load_trained_model

    return load_trained_model(run, torch.device("cpu"))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit_b32", help="conf/clip/PRESET.yaml gives the model's shape")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a CPU replica has one)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmtrain-model-load"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model_load.json"))
    args = parser.parse_args()

    from benchmarks.data_throughput import make_shards
    from mmtrain.inference.trained import find_trained

    torch.set_num_threads(args.threads)
    shards = make_shards(args.work / "shards", 16, 64)  # the config's tokenizer and shard list only
    checkpoint = make_checkpoint(shards, args.preset, args.work / "run")
    run = find_trained(checkpoint, "clip", "embed")
    sides = {"with_initialisation": load_with_initialisation, "load_trained_model": load_as_inference_does}
    seconds = {name: [] for name in sides}
    for round_index in range(args.rounds + 1):  # round 0 warms the page cache and imports, untimed
        for name, load in sides.items():
            started = time.perf_counter()
            model = load(run)
            if round_index:
                seconds[name].append(time.perf_counter() - started)
            del model
    reference, skipped = load_with_initialisation(run).state_dict(), load_as_inference_does(run).state_dict()
    median = {name: statistics.median(values) for name, values in seconds.items()}
    report = {
        "benchmark": "model_load",
        "preset": args.preset,
        "threads": args.threads,
        "parameters": sum(value.numel() for value in reference.values()),
        "seconds": seconds,
        "median_seconds": median,
        "ratio_load_trained_model_to_with_initialisation": median["load_trained_model"] / median["with_initialisation"],
        "same_weights": reference.keys() == skipped.keys()
        and all(torch.equal(reference[key], skipped[key]) for key in reference),
    }
    print(
        f"{args.preset} on {args.threads} thread(s): with initialisation {median['with_initialisation']:.2f} s, "
        f"load_trained_model {median['load_trained_model']:.2f} s; same weights: {report['same_weights']}"
    )
    write_report(args.out, report)


if __name__ == "__main__":
    main()
