"""Benchmarks named by --benchmark: built-in names, YAML files, suites and directories in published
layouts; and the parsers of their untrusted files, which answer any input with a result or a
ValueError that says what to change."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmtrain.evaluation import layouts
from mmtrain.evaluation.benchmark import BUILTIN_DIR, resolve_benchmarks, settings_hash
from mmtrain.evaluation.folder_benchmark import classnames_for, prepare_folder_benchmark, templates_for
from mmtrain.evaluation.report import BenchmarkResult, load_report, markdown_table, mlflow_metric_name, write_report

PNG = b"\x89PNG\r\n\x1a\n"  # an image by its name; decoding is not needed here


def class_folder_tree(root, classes=("golden_retriever", "tabby_cat"), per_class=3):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.jpg").write_bytes(PNG)
    return root


def test_class_folders_are_zero_shot_and_a_train_split_adds_a_linear_probe(tmp_path):
    class_folder_tree(tmp_path / "my-pets" / "test")
    (tmp_path / "my-pets" / "test" / "empty").mkdir()  # no images: not a class
    (benchmark,) = resolve_benchmarks(str(tmp_path / "my-pets"))
    assert (benchmark.name, benchmark.task, benchmark.data) == (
        "my-pets",
        "zeroshot_classification",
        str(tmp_path / "my-pets/test"),
    )
    class_folder_tree(tmp_path / "my-pets" / "train")
    tasks = [(b.task, b.train_data) for b in resolve_benchmarks(str(tmp_path / "my-pets"))]
    assert tasks == [("zeroshot_classification", ""), ("linear_probe", str(tmp_path / "my-pets/train"))]
    prepared = prepare_folder_benchmark(resolve_benchmarks(str(tmp_path / "my-pets"))[0])
    assert prepared.files[:2] == ("golden_retriever/0.jpg", "golden_retriever/1.jpg") and prepared.labels == (
        0,
        0,
        0,
        1,
        1,
        1,
    )
    assert prepared.classnames == ("golden retriever", "tabby cat") and prepared.templates == ("a photo of a {c}.",)


def test_a_known_dataset_gets_clip_benchmarks_class_names_and_openais_templates(tmp_path):
    root = tmp_path / "eurosat"
    class_folder_tree(root, [f"{i:02d}" for i in range(10)], per_class=1)
    (benchmark,) = resolve_benchmarks(str(root))
    assert classnames_for(benchmark, [f"{i:02d}" for i in range(10)])[:2] == ["annual crop land", "forest"]
    assert templates_for(benchmark) == [f"a centered satellite photo of {a}{{c}}." for a in ("", "a ", "the ")]
    (cifar,) = resolve_benchmarks(str(class_folder_tree(tmp_path / "cifar10", ["cat", "dog"], per_class=1)))
    assert len(templates_for(cifar)) == 18 and templates_for(cifar)[0] == "a photo of a {c}."  # OpenAI's 18


def test_a_karpathy_json_reads_its_test_split_only(tmp_path):
    images = [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "a dog"}, {"raw": "dog"}]},
        {"filename": "b.jpg", "split": "train", "sentences": [{"raw": "a cat"}]},
        {"filename": "c.jpg", "split": "test", "sentences": ["a bird"]},
    ]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    (benchmark,) = resolve_benchmarks(str(tmp_path))
    assert benchmark.task == "zeroshot_retrieval"
    files, captions, owners = layouts.read_karpathy(tmp_path / "dataset_coco.json", "test")
    assert files == ["val2014/a.jpg", "c.jpg"] and captions == ["a dog", "dog", "a bird"] and owners == [0, 0, 1]


def test_questions_files_say_their_task(tmp_path):
    for task, row in (
        ("vqa", {"image": "x.jpg", "question": "q", "answers": ["a"]}),
        ("multiple_choice", {"image": "x.jpg", "question": "q", "options": ["a", "b"], "answer": "A"}),
        ("captioning", {"image": "x.jpg", "captions": ["c"]}),
    ):
        (tmp_path / task).mkdir()
        (tmp_path / task / "questions.jsonl").write_text(json.dumps(row) + "\n")
        (benchmark,) = resolve_benchmarks(str(tmp_path / task))
        assert benchmark.task == task and benchmark.kind == "vlm"
        assert benchmark.settings()["decoding"] == "greedy" and benchmark.settings()["max_new_tokens"] > 0


def test_a_suite_names_built_ins_and_spells_out_others(tmp_path):
    names = [(b.name, b.templates) for b in resolve_benchmarks("fashion_mnist_suite")]
    assert names == [("fashion_mnist", []), ("fashion_mnist_one_prompt", ["a photo of a {c}."])]
    assert {p.stem for p in BUILTIN_DIR.glob("*.yaml")} >= {"fashion_mnist", "fashion_mnist_suite"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("task: vqa\n", "needs `data`"),
        ("name: x\ntask: detection\ndata: d\n", "is not one of"),
        ("name: x\ntask: vqa\ndata: d\nprompts: p\n", "unknown benchmark keys ['prompts']"),
        ("benchmarks: []\n", "non-empty list"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_a_wrong_benchmark_file_says_what_to_change(tmp_path, content, message):
    (tmp_path / "bench.yaml").write_text(content)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve_benchmarks(str(tmp_path / "bench.yaml"))


def test_an_unknown_benchmark_lists_the_built_in_ones(tmp_path):
    with pytest.raises(ValueError, match="fashion_mnist"):
        resolve_benchmarks("imagenet-but-misspelt")
    with pytest.raises(ValueError, match="no class folders"):
        resolve_benchmarks(str(tmp_path))


def test_in_training_benchmarks_refuse_what_a_run_cannot_evaluate(tmp_path):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "questions.jsonl").write_text(json.dumps({"image": "x", "question": "q", "answers": ["a"]}))
    with pytest.raises(ValueError, match="mmtrain eval --benchmark"):
        prepare_folder_benchmark(resolve_benchmarks(str(tmp_path / "q"))[0])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["images", "filename", "split", "sentences", "raw", "filepath"]), inner, max_size=5
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=JSON_VALUES)
def test_any_json_is_a_karpathy_file_or_a_clear_refusal(tmp_path, data):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    try:
        files, captions, owners = layouts.read_karpathy(path, "test")
    except ValueError:
        return
    assert files and len(captions) == len(owners) and all(isinstance(c, str) for c in captions)
    assert max(owners) < len(files)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.text(max_size=30) | JSON_VALUES.map(json.dumps), max_size=5),
    task=st.sampled_from(["vqa", "multiple_choice", "captioning"]),
)
def test_any_questions_file_is_rows_or_a_clear_refusal(tmp_path, lines, task):
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(line.replace("\n", " ") for line in lines))
    try:
        rows = layouts.read_questions(path)
        for number, row in enumerate(rows):
            layouts.check_question(row, task, f"question {number}")
    except ValueError:
        return
    assert all(isinstance(row, dict) for row in rows)


def test_reports_compare_side_by_side_and_flag_different_settings(tmp_path):
    def result(value, templates):
        settings_ = {"templates": templates}
        return BenchmarkResult(
            "my-pets",
            "zeroshot_classification",
            {"acc1": value, "acc5": float("nan")},
            10,
            settings_hash(settings_),
            settings_,
        )

    write_report(tmp_path / "a", {"name": "run-a"}, [result(0.5, ["a {c}"])])
    write_report(tmp_path / "b", {"name": "run-b"}, [result(0.75, ["a photo of a {c}."])])
    table = markdown_table([load_report(tmp_path / "a"), load_report(tmp_path / "b" / "report.json")])
    assert "| benchmark | metric | run-a | run-b |" in table
    assert "| my-pets | acc1 (settings differ) | 0.5000 | 0.7500 |" in table and "| n/a | n/a |" in table
    with pytest.raises(ValueError, match="run `mmtrain eval"):
        load_report(tmp_path / "nothing")
    assert mlflow_metric_name("coco", "image_retrieval_recall@5") == "coco/image_retrieval_recall_at_5"


@pytest.mark.parametrize("task", ["zeroshot_classification", "zeroshot_retrieval", "linear_probe"])
def test_a_benchmark_whose_every_image_is_unreadable_says_so(tmp_path, task):
    from mmtrain.evaluation.benchmark import Benchmark
    from mmtrain.inference.clip_benchmarks import RUNNERS

    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            (tmp_path / split / label / "a.jpg").write_bytes(b"not a jpeg")
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": [{"filename": "test/cat/a.jpg", "split": "test", "sentences": ["a"]}]}))
    bench = Benchmark(
        name="broken",
        task=task,
        data=str(tmp_path if task == "zeroshot_retrieval" else tmp_path / "test"),
        train_data=str(tmp_path / "train"),
        annotations=str(karpathy),
    )

    def nothing_readable(data, files=None, classes=()):  # what the actor pool returns when every image is bad
        return {}, 2

    with pytest.raises(ValueError, match=r"benchmark broken: no (labelled )?images could be read .*\(2 skipped"):
        RUNNERS[task](bench, nothing_readable, encode=lambda texts: pytest.fail("nothing to encode"))
