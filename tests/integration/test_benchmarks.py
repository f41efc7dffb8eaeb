"""`mmtrain eval clip --benchmark` end to end from the command line, on benchmark directories built
here in their published layouts (class folders; a Karpathy JSON over an image folder), against
CLIP_benchmark's own evaluate() run on the same model and the same images."""

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from mmtrain.inference import clip_benchmarks
from mmtrain.jobs.cli import main
from mmtrain.pipelines.images import decode_eval
from mmtrain.pipelines.tar_samples import iter_records
from mmtrain.pipelines.tokenizer import configure_fixed_length, load_tokenizer
from mmtrain.training.checkpoint.store import load_checkpoint
from mmtrain.training.tasks.clip import ClipTask
from tests.clip_benchmark_reference import zeroshot_classification, zeroshot_retrieval
from tests.trained_models import tiny_clip_config

pytestmark = pytest.mark.integration
CLASSES = ["circle", "square", "triangle"]


def records_of(shard: Path, count: int):
    return list(iter_records(open(shard, "rb")))[:count]


def class_folders(root: Path, records) -> None:
    for record in records:
        (root / CLASSES[record.label]).mkdir(parents=True, exist_ok=True)
        (root / CLASSES[record.label] / f"{record.key}.png").write_bytes(record.image_bytes)


def karpathy(root: Path, records) -> dict:
    """An image folder and its dataset_*.json: two captions per test image, and train images beside them."""
    (root / "images").mkdir(parents=True)
    entries = []
    for number, record in enumerate(records):
        (root / "images" / f"{record.key}.png").write_bytes(record.image_bytes)
        sentences = [{"raw": record.caption}, {"raw": f"a picture: {record.caption}"}]
        split = "train" if number % 5 == 4 else "test"
        entries.append({"filepath": "images", "filename": f"{record.key}.png", "split": split, "sentences": sentences})
    (root / "dataset_shapes.json").write_text(json.dumps({"images": entries}))
    return {e["filename"]: [s["raw"] for s in e["sentences"]] for e in entries if e["split"] == "test"}


class Reference(torch.nn.Module):
    """The trained mmtrain CLIP behind CLIP_benchmark's model interface (open_clip's): encode_image on
    normalised pixels, encode_text on what its tokenizer returned (here: rows of a pre-tokenized table,
    since mmtrain's text tower also takes the attention mask)."""

    def __init__(self, checkpoint: Path, cfg):
        super().__init__()
        self.task = ClipTask(cfg)
        self.model = self.task.build_model()
        load_checkpoint(checkpoint, self.model)
        self.model.eval()
        self.tokenizer = configure_fixed_length(load_tokenizer(cfg.data.tokenizer), cfg.data.context_length)
        self.texts: list = []

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        start = len(self.texts)
        self.texts += self.tokenizer.encode_batch(texts)
        return torch.arange(start, len(self.texts))

    def encode_image(self, images):
        return self.model.encode_image(images)

    def encode_text(self, rows):
        encodings = [self.texts[i] for i in rows.tolist()]
        ids = torch.tensor([e.ids for e in encodings])
        return self.model.encode_text(ids, torch.tensor([e.attention_mask for e in encodings]))

    def pixels(self, files: list[Path], cfg) -> torch.Tensor:
        import numpy as np

        images = np.stack([decode_eval(f.read_bytes(), cfg.data.augment, 1 << 26) for f in files])
        return self.task.normalize(images, torch.device("cpu"))


class Loader(list):
    def __init__(self, batches, classes=()):
        super().__init__(batches)
        self.dataset = type("Dataset", (), {"classes": list(classes)})()


def test_benchmark_layouts_from_the_cli_equal_clip_benchmark(
    ray_local, clip_run, shapes, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    folders, retrieval = tmp_path / "shapes-cls", tmp_path / "shapes-ret"
    class_folders(folders / "test", records_of(shapes / "val-00000.tar", 60))
    class_folders(folders / "train", records_of(shapes / "train-00000.tar", 150))
    (folders / "test" / "circle" / "broken.png").write_bytes(b"not an image")  # skipped and counted
    captions = karpathy(retrieval, records_of(shapes / "val-00000.tar", 50))

    pipelines = []  # the image sets sent through the actor pool
    start_inference = clip_benchmarks.start_inference
    monkeypatch.setattr(
        clip_benchmarks, "start_inference", lambda *a, **kw: pipelines.append(kw["files"]) or start_inference(*a, **kw)
    )
    out = tmp_path / "report"
    args = ["eval", "clip", "--checkpoint", str(clip_run), "--benchmark", str(folders), str(retrieval)]
    assert main(args + ["--out", str(out), "--json", "--actors", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    results = {r["task"]: r for r in report["results"]}
    assert set(results) == {"zeroshot_classification", "linear_probe", "zeroshot_retrieval"}
    # The test folder went through the pool once for the zero-shot and the probe; then train, retrieval.
    assert len(pipelines) == 3 and len({tuple(files) for files in pipelines}) == 3

    cfg = tiny_clip_config(shapes)
    reference = Reference(clip_run, cfg)
    test_files = sorted((folders / "test").glob("*/[!b]*.png"))
    labels = torch.tensor([CLASSES.index(f.parent.name) for f in test_files])
    zero_shot = results["zeroshot_classification"]
    assert zero_shot["samples"] == 60 and zero_shot["settings"]["bad_samples"] == 1
    theirs = zeroshot_classification.evaluate(
        reference,
        Loader([(reference.pixels(test_files, cfg), labels)], CLASSES),
        reference.tokenize,
        zero_shot["settings"]["classnames"],
        zero_shot["settings"]["templates"],
        "cpu",
        amp=False,
    )
    mine = zero_shot["metrics"]
    assert mine["acc1"] == theirs["acc1"] and mine["mean_per_class_recall"] == theirs["mean_per_class_recall"]

    names = sorted(captions)
    theirs = zeroshot_retrieval.evaluate(
        reference,
        Loader([(reference.pixels([retrieval / "images" / n for n in names], cfg), [captions[n] for n in names])]),
        reference.tokenize,
        "cpu",
        amp=False,
        recall_k_list=[1, 5, 10],
    )
    assert results["zeroshot_retrieval"]["samples"] == 40 and results["zeroshot_retrieval"]["metrics"] == theirs
    probe = results["linear_probe"]  # its numbers: tests/unit/test_benchmark_metrics.py
    assert probe["samples"] == 60 and probe["settings"]["train_samples"] == 150
    assert set(probe["metrics"]) == {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "lp_l2"}

    # One table in MLflow, the report beside it; a second report compared with the first.
    client = MlflowClient()
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("mmtrain-clip").experiment_id])
    assert mlflow_run.data.metrics[f"{folders.name}/acc1"] == mine["acc1"]
    assert mlflow_run.info.artifact_uri.startswith(tmp_path.as_uri())  # beside the store, not in the cwd
    logged = {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "benchmarks")}
    assert {"benchmarks/results.json", "benchmarks/report.json", "benchmarks/report.md"} <= logged
    again = ["eval", "clip", "--checkpoint", str(clip_run), "--benchmark", str(retrieval), "--out", str(tmp_path / "2")]
    assert main(again + ["--compare", str(out), "--actors", "1"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if "image_retrieval_recall@5 |" in line)
    value = f"{theirs['image_retrieval_recall@5']:.4f}"
    assert row.count(value) == 2, table


def test_vlm_benchmarks_score_what_the_model_answers_to_the_pinned_prompt(clip_run, shapes, tmp_path, capsys):
    """VQA, multiple choice and captioning from questions files: each answer is the one `mmtrain ask`
    gives to the benchmark's pinned prompt, and the scores are the reference scorers' on those answers."""
    from pycocoevalcap.cider.cider import Cider

    from mmtrain.evaluation.cider import caption_words
    from mmtrain.evaluation.vqa import vqa_accuracy
    from mmtrain.inference.trained import find_trained
    from mmtrain.inference.vlm_stages import Answerer
    from tests.trained_models import save_tiny_vlm

    vlm = save_tiny_vlm(clip_run, shapes / "val-00000.tar", tmp_path / "vlm-run")
    records = records_of(shapes / "val-00000.tar", 6)
    bench = tmp_path / "bench"
    (bench / "images").mkdir(parents=True)
    for record in records:
        (bench / "images" / f"{record.key}.png").write_bytes(record.image_bytes)
    rows = {
        "vqa": [
            {"image": f"{r.key}.png", "question": "What shape is it?", "answers": [r.caption.split()[-4]] * 10}
            for r in records
        ],
        "multiple_choice": [
            {"image": f"{r.key}.png", "question": "Which shape?", "options": CLASSES, "answer": r.label}
            for r in records
        ],
        "captioning": [
            {"image": f"{r.key}.png", "captions": [r.caption, "shapes on a plain background"]} for r in records
        ],
    }
    rows["vqa"].append({"image": "missing.png", "question": "?", "answers": ["x"]})  # skipped, counted
    for task, items in rows.items():  # a benchmark.yaml each: the questions, and the images they share
        (bench / task).mkdir()
        (bench / task / "questions.jsonl").write_text("\n".join(json.dumps(row) for row in items))
        spec = {"name": f"shapes-{task}", "task": task, "data": "../images", "annotations": "questions.jsonl"}
        (bench / task / "benchmark.yaml").write_text(json.dumps(spec))

    args = ["eval", "vlm", "--checkpoint", str(vlm.parent), "--benchmark"] + [str(bench / n) for n in rows]
    assert main(args + ["--out", str(tmp_path / "report"), "--json"]) == 0
    results = {r["task"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    vqa, mc, cap = results["vqa"], results["multiple_choice"], results["captioning"]
    assert vqa["samples"] == 6 and vqa["settings"]["bad_samples"] == {"unreadable_file": 1}

    run = find_trained(vlm.parent, "vlm", "ask")
    prompt = "What shape is it?\nAnswer the question using a single word or phrase."  # LLaVA-1.5's VQA prompt
    ask = Answerer(run, prompt, max_new_tokens=vqa["settings"]["max_new_tokens"])
    assert vqa["examples"][0]["prompt"] == prompt
    assert vqa["examples"][0]["generated"] == ask.answer_files([bench / "images" / f"{records[0].key}.png"])
    expected = sum(vqa_accuracy(e["generated"], rows["vqa"][i]["answers"]) for i, e in enumerate(vqa["examples"])) / 6
    assert vqa["metrics"]["vqa_accuracy"] == expected
    assert "A. circle\nB. square\nC. triangle" in mc["examples"][0]["prompt"]
    assert 0 <= mc["metrics"]["mc_accuracy"] <= 1 and 0 <= mc["metrics"]["mc_unparsed"] <= 1
    refs = {i: [caption_words(c) for c in row["captions"]] for i, row in enumerate(rows["captioning"])}
    generated = {i: [caption_words(e["generated"])] for i, e in enumerate(cap["examples"])}
    assert cap["metrics"]["cider"] == pytest.approx(Cider().compute_score(refs, generated)[0], rel=1e-12)
