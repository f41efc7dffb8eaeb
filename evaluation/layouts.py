"""Readers for the layouts benchmarks are published in. Every file is untrusted: sizes are bounded
before it is parsed, fields are type-checked, and a path inside it stays under its directory."""

from __future__ import annotations

import json
from pathlib import Path

from mmtrain.evaluation.choices import option_letters
from mmtrain.pipelines import bad_samples
from mmtrain.pipelines.config import AugmentConfig
from mmtrain.pipelines.contained_files import read_contained
from mmtrain.pipelines.images import IMAGE_SUFFIXES, BadSample, decode_eval
from mmtrain.pipelines.tar_samples import MAX_MEMBER_BYTES

MAX_ANNOTATION_BYTES = 1 << 30  # Karpathy's COCO JSON is ~150 MB
SNIFF_BYTES = 1 << 16
QUESTION_FILES = ("questions.jsonl", "questions.json")


def read_image(root: Path, name: str, augment: AugmentConfig, max_pixels: int):
    """A benchmark's image file under `root`, decoded as evaluation decodes images (uint8 HWC), or
    the reason it is skipped (bad_samples): a file outside root, too large, unreadable, no image."""
    try:
        content = read_contained(root / name, root.resolve(), MAX_MEMBER_BYTES, bad_samples.OVERSIZED_MEMBER)
    except OSError:
        return bad_samples.UNREADABLE_FILE
    if isinstance(content, str):
        return content
    try:
        return decode_eval(content, augment, max_pixels)
    except BadSample as err:
        return err.reason


def _images_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(root: Path) -> list[str]:
    """Subfolders of `root` that hold images, sorted (torchvision's ImageFolder numbering)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _images_in(p))


def class_folder_files(root: Path) -> tuple[list[str], list[int], list[str]]:
    """(image files as CLASS/NAME, their class numbers, the class folders)."""
    folders = class_folders(root)
    pairs = [(f"{folder}/{name}", label) for label, folder in enumerate(folders) for name in _images_in(root / folder)]
    return [name for name, _ in pairs], [label for _, label in pairs], folders


def _load_json(path: Path):
    size = path.stat().st_size
    if size > MAX_ANNOTATION_BYTES:
        raise ValueError(f"{path} is {size} bytes, over the {MAX_ANNOTATION_BYTES} an annotation file may hold")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def find_karpathy_json(directory: Path) -> Path | None:
    for path in sorted(directory.glob("*.json")):
        with open(path, "rb") as file:
            head = file.read(SNIFF_BYTES)
        if b'"images"' in head and b'"sentences"' in head:
            return path
    return None


def read_karpathy(path: Path, split: str, limit: int = 0) -> tuple[list[str], list[str], list[int]]:
    """(image files relative to the JSON's folder, captions, each caption's image number) of `split`."""
    data = _load_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f'{path}: a Karpathy JSON is {{"images": [...]}}')
    files, captions, caption_image = [], [], []
    for number, entry in enumerate(images):
        if not isinstance(entry, dict) or entry.get("split") != split:
            continue
        name, sentences = entry.get("filename"), entry.get("sentences")
        if not isinstance(name, str) or not isinstance(sentences, list) or not sentences:
            raise ValueError(f"{path}: image {number} needs a `filename` and a non-empty `sentences` list")
        texts = [s.get("raw") if isinstance(s, dict) else s for s in sentences]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError(f'{path}: image {number}\'s sentences must be strings or {{"raw": ...}}')
        folder = entry.get("filepath", "")
        files.append(str(Path(folder) / name) if isinstance(folder, str) and folder else name)
        captions += texts
        caption_image += [len(files) - 1] * len(texts)
        if limit and len(files) == limit:
            break
    if not files:
        raise ValueError(f"{path}: no images in split {split!r}")
    return files, captions, caption_image


def find_questions_file(directory: Path) -> Path | None:
    return next((directory / name for name in QUESTION_FILES if (directory / name).is_file()), None)


def read_questions(path: Path, limit: int = 0) -> list[dict]:
    """Rows of a questions file: JSON Lines, or one JSON list."""
    if path.suffix == ".jsonl":
        if path.stat().st_size > MAX_ANNOTATION_BYTES:
            raise ValueError(f"{path} is over the {MAX_ANNOTATION_BYTES} bytes an annotation file may hold")
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number} is not JSON: {err}") from None
    else:
        rows = _load_json(path)
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path}: expected one JSON object per question")
    return rows[:limit] if limit else rows


def question_task(path: Path) -> str:
    first = read_questions(path, limit=1)
    if not first:
        raise ValueError(f"{path} holds no questions")
    row = first[0]
    if "options" in row:
        return "multiple_choice"
    if "captions" in row:
        return "captioning"
    if "answers" in row:
        return "vqa"
    raise ValueError(f"{path}: a question row needs `answers` (VQA), `options` (multiple choice) or `captions`")


def check_question(row: dict, task: str, where: str) -> None:
    """A row has what its task needs, with the types it needs."""
    images = row.get("image")
    if not (
        isinstance(images, str) or (isinstance(images, list) and images and all(isinstance(i, str) for i in images))
    ):
        raise ValueError(f"{where}: `image` must be a file name or a list of them")
    wanted = {
        "vqa": ("question", "answers"),
        "multiple_choice": ("question", "options", "answer"),
        "captioning": ("captions",),
    }
    for key in wanted[task]:
        if key not in row:
            raise ValueError(f"{where}: a {task} row needs `{key}`")
    for key in ("answers", "options", "captions"):
        if key in row and not (isinstance(row[key], list) and row[key] and all(isinstance(v, str) for v in row[key])):
            raise ValueError(f"{where}: `{key}` must be a non-empty list of strings")
    if "question" in row and not isinstance(row["question"], str):
        raise ValueError(f"{where}: `question` must be a string")
    if task == "multiple_choice":
        letters = option_letters(row["options"])
        answer = row["answer"]
        if not (
            (isinstance(answer, int) and 0 <= answer < len(letters))
            or (isinstance(answer, str) and answer.strip().upper() in letters)
        ):
            raise ValueError(
                f"{where}: `answer` must be an option's letter ({', '.join(letters)}) or its number from 0"
            )
