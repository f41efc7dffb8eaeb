"""What a benchmark is: a task, its data in a published layout, and every setting that changes its
numbers (class names, templates, prompt, generation length), pinned so that a result can name them.

`--benchmark` takes a built-in name (conf/eval/NAME.yaml), a YAML file (one benchmark, or a suite:
`benchmarks: [...]`) or a directory in a layout it recognises:
- `benchmark.yaml` inside it: that file, its paths relative to the directory;
- class folders (ImageNet style: DIR/CLASS/*.jpg, or DIR/test/CLASS/... with DIR/train/ for a
  linear probe): zero-shot classification;
- a Karpathy-style JSON (COCO, Flickr30k: {"images": [{"filename", "split", "sentences"}]}):
  image and text retrieval over its `test` split;
- a questions file (questions.jsonl) for a VLM: VQA (rows with `answers`), multiple choice
  (`options`, `answer`) or captioning (`captions`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mmtrain.evaluation import layouts

CLIP_TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe")
VLM_TASKS = ("vqa", "multiple_choice", "captioning")
# The prompts LLaVA-1.5's evaluation scripts use ({question}, {options} filled per question).
DEFAULT_PROMPTS = {
    "vqa": "{question}\nAnswer the question using a single word or phrase.",
    "multiple_choice": "{question}\n{options}\nAnswer with the option's letter from the given choices directly.",
    "captioning": "Provide a one-sentence caption for the provided image.",
}
DEFAULT_MAX_NEW_TOKENS = {"vqa": 16, "multiple_choice": 8, "captioning": 40}
BENCHMARK_FILE = "benchmark.yaml"
# Built-in benchmarks and suites: conf/eval/NAME.yaml (conf/ is beside evaluation/ in a clone and in
# the installed package alike).
BUILTIN_DIR = Path(__file__).resolve().parents[1] / "conf" / "eval"
MAX_SPEC_BYTES = 1 << 20  # a benchmark or suite YAML


@dataclass(frozen=True)
class Benchmark:
    name: str
    task: str
    data: str  # images: class folders, an image folder, or shards (zero-shot classification)
    train_data: str = ""  # linear_probe: the training split's class folders
    annotations: str = ""  # zeroshot_retrieval: a Karpathy JSON; VLM tasks: the questions file
    split: str = "test"  # the Karpathy JSON's split
    classnames: list[str] = field(default_factory=list)  # [] = built in for `dataset`, else folder names
    templates: list[str] = field(default_factory=list)  # [] = built in for `dataset`, else OpenAI's generic one
    dataset: str = ""  # a CLIP_benchmark dataset name whose class names/templates are built in ("" = name)
    recall_k: list[int] = field(default_factory=lambda: [1, 5, 10])
    prompt: str = ""  # VLM tasks; "" = DEFAULT_PROMPTS[task]
    max_new_tokens: int = 0  # VLM tasks; 0 = DEFAULT_MAX_NEW_TOKENS[task] (greedy decoding)
    limit: int = 0  # evaluate the first `limit` items only (0 = all)

    @property
    def kind(self) -> str:
        return "clip" if self.task in CLIP_TASKS else "vlm"

    def settings(self) -> dict:
        """Everything that decides the numbers, the defaults filled in (logged beside them)."""
        settings = dataclasses.asdict(self)
        if self.kind == "vlm":
            settings["prompt"] = self.prompt or DEFAULT_PROMPTS[self.task]
            settings["max_new_tokens"] = self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[self.task]
            settings["decoding"] = "greedy"
        return settings


def settings_hash(settings: dict) -> str:
    """Twelve hex digits over the settings that decide a result: equal hashes, comparable numbers."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def resolve_benchmarks(spec: str, builtin_dir: Path = BUILTIN_DIR) -> list[Benchmark]:
    """The benchmarks `--benchmark SPEC` names (a suite names several)."""
    path = Path(spec)
    builtin = builtin_dir / f"{spec}.yaml"
    if path.is_dir():
        if (path / BENCHMARK_FILE).is_file():
            return _from_yaml(path / BENCHMARK_FILE, path, builtin_dir)
        return detect_layout(path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _from_yaml(path, path.parent, builtin_dir)
    if "/" not in spec and builtin.is_file():
        return _from_yaml(builtin, None, builtin_dir)
    known = sorted(p.stem for p in builtin_dir.glob("*.yaml"))
    raise ValueError(
        f"--benchmark {spec!r} is neither a directory, a YAML file nor a built-in benchmark "
        f"({', '.join(known)}): give a folder of class folders, a folder with a Karpathy JSON or a "
        f"questions.jsonl, or a {BENCHMARK_FILE}"
    )


def _from_yaml(path: Path, base: Path | None, builtin_dir: Path) -> list[Benchmark]:
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise ValueError(f"{path} is over {MAX_SPEC_BYTES} bytes: a benchmark file holds settings, not data")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping (a benchmark's keys, or `benchmarks: [...]`)")
    if "benchmarks" in data:
        entries = data["benchmarks"]
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{path}: `benchmarks` must be a non-empty list of benchmarks or their names")
        found = []
        for entry in entries:
            if isinstance(entry, str):
                found += resolve_benchmarks(entry if base is None else str(_under(base, entry)), builtin_dir)
            else:
                found.append(benchmark_from_dict(entry, base, str(path)))
        return found
    # A directory's benchmark.yaml is named after the directory, any other file after itself.
    name = path.parent.resolve().name if path.name == BENCHMARK_FILE else path.stem
    return [benchmark_from_dict({"name": name, **data}, base, str(path))]


def benchmark_from_dict(data: dict, base: Path | None, where: str) -> Benchmark:
    """A benchmark from its keys; relative paths are under `base` (a user's benchmark directory or
    file) or, for a built-in one, the working directory (as the training presets' are)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: each benchmark is a mapping of keys, got {data!r}")
    known = {f.name for f in dataclasses.fields(Benchmark)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown benchmark keys {unknown}; known: {sorted(known)}")
    for key in ("name", "task", "data"):
        if not data.get(key):
            raise ValueError(f"{where}: a benchmark needs `{key}`")
    if data["task"] not in CLIP_TASKS + VLM_TASKS:
        raise ValueError(f"{where}: task {data['task']!r} is not one of {', '.join(CLIP_TASKS + VLM_TASKS)}")
    for key in ("data", "train_data", "annotations"):
        if data.get(key) and base is not None:
            data = {**data, key: str(_under(base, data[key]))}
    try:
        return Benchmark(**data)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None


def _under(base: Path, relative: str) -> Path:
    return Path(relative) if Path(relative).is_absolute() or "://" in relative else base / relative


def detect_layout(directory: Path) -> list[Benchmark]:
    """The benchmarks a directory without a benchmark.yaml holds, by its layout."""
    name = directory.resolve().name
    karpathy = layouts.find_karpathy_json(directory)
    if karpathy is not None:
        return [Benchmark(name, "zeroshot_retrieval", str(directory), annotations=str(karpathy))]
    questions = layouts.find_questions_file(directory)
    if questions is not None:
        task = layouts.question_task(questions)
        return [Benchmark(name, task, str(directory), annotations=str(questions))]
    test = directory / "test" if (directory / "test").is_dir() else directory
    if not layouts.class_folders(test):
        raise ValueError(
            f"--benchmark {directory}: found no class folders (DIR/CLASS/*.jpg), no Karpathy JSON and no "
            f"questions.jsonl there; add a {BENCHMARK_FILE} that says what it holds"
        )
    found = [Benchmark(name, "zeroshot_classification", str(test))]
    if (directory / "train").is_dir() and test != directory:
        found.append(Benchmark(name, "linear_probe", str(test), train_data=str(directory / "train")))
    return found
