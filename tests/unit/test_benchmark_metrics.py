"""The benchmark metrics against their reference implementations: LAION's CLIP_benchmark (its own
metric functions, from the clip-benchmark package) for zero-shot classification and retrieval,
pycocoevalcap's Cider for CIDEr-D, and the official VQA script's published behaviour."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocoevalcap.cider.cider import Cider

from mmtrain.evaluation.choices import format_options, picked_option
from mmtrain.evaluation.cider import caption_words, cider
from mmtrain.evaluation.clip_metrics import (
    classification_metrics,
    retrieval_metrics,
    zero_shot_logits,
    zero_shot_weights,
)
from mmtrain.evaluation.linear_probe import linear_probe
from mmtrain.evaluation.vqa import normalise_answer, vqa_accuracy
from tests.clip_benchmark_reference import zeroshot_classification, zeroshot_retrieval


class Features(torch.nn.Module):
    """A CLIP-like model for CLIP_benchmark whose "images" are already embeddings and whose texts are
    looked up: both sides then see exactly the same vectors."""

    def __init__(self, texts: list[str], text_vectors: torch.Tensor):
        super().__init__()
        self.index = {text: i for i, text in enumerate(texts)}
        self.table = text_vectors

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[self.index[t]] for t in texts])

    def encode_image(self, images):
        return images

    def encode_text(self, tokens):
        return self.table[tokens[:, 0]]

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.encode_text(self.tokenize(texts))


class Loader(list):
    """Batches, with the `.dataset.classes` CLIP_benchmark reads."""

    def __init__(self, batches, classes=()):
        super().__init__(batches)
        self.dataset = type("Dataset", (), {"classes": list(classes)})()


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), classes=st.integers(2, 12), images=st.integers(1, 80), templates=st.integers(1, 3))
def test_zero_shot_metrics_equal_clip_benchmarks(seed, classes, images, templates):
    g = torch.Generator().manual_seed(seed)
    names = [f"class{c}" for c in range(classes)]
    prompts = [f"template {t} of {{c}}" for t in range(templates)]
    texts = [p.replace("{c}", n) for n in names for p in prompts]
    model = Features(texts, torch.randn(len(texts), 16, generator=g))
    image_NE = torch.randn(images, 16, generator=g)
    labels_N = torch.randint(0, classes, (images,), generator=g)
    batches = Loader([(image_NE[i : i + 32], labels_N[i : i + 32]) for i in range(0, images, 32)], names)
    theirs = zeroshot_classification.evaluate(model, batches, model.tokenize, names, prompts, "cpu", amp=False)
    weights = zero_shot_weights(model.encode_texts, names, prompts)
    mine = classification_metrics(zero_shot_logits(image_NE, weights), labels_N)
    assert set(mine) == set(theirs)
    assert all(same(mine[k], float(theirs[k])) for k in mine), (mine, theirs)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), images=st.integers(10, 60), most_captions=st.integers(1, 5))
def test_retrieval_recall_equals_clip_benchmarks(seed, images, most_captions):
    g = torch.Generator().manual_seed(seed)
    per_image = torch.randint(1, most_captions + 1, (images,), generator=g).tolist()
    captions = [[f"caption {i}.{j}" for j in range(n)] for i, n in enumerate(per_image)]
    texts = [c for image in captions for c in image]
    image_NE = torch.randn(images, 8, generator=g)
    # Texts near their image, so that recall is neither 0 nor 1.
    owner_T = torch.tensor([i for i, n in enumerate(per_image) for _ in range(n)])
    model = Features(texts, image_NE[owner_T] + 1.5 * torch.randn(len(texts), 8, generator=g))
    batches = Loader([(image_NE[i : i + 16], captions[i : i + 16]) for i in range(0, images, 16)])
    theirs = zeroshot_retrieval.evaluate(model, batches, model.tokenize, "cpu", amp=False, recall_k_list=[1, 5, 10])
    mine = retrieval_metrics(image_NE, model.encode_texts(texts), owner_T, ks=(1, 5, 10))
    assert mine == pytest.approx(theirs, abs=0) and set(mine) == set(theirs)


def test_a_collapsed_model_scores_chance_not_a_perfect_recall():
    """Every score equal: CLIP_benchmark's sort would hand out hits by memory order; here R@k = k/N."""
    image_NE, text_TE = torch.ones(20, 4), torch.ones(20, 4)
    metrics = retrieval_metrics(image_NE, text_TE, torch.arange(20), ks=(1, 5))
    assert metrics["image_retrieval_recall@1"] == pytest.approx(1 / 20)
    assert metrics["text_retrieval_recall@5"] == pytest.approx(5 / 20)
    # Two captions per image, all tied: P(one of 2 positives in the top 1 of 40 texts) = 2/40.
    metrics = retrieval_metrics(torch.ones(20, 4), torch.ones(40, 4), torch.arange(40) // 2, ks=(1,))
    assert metrics["text_retrieval_recall@1"] == pytest.approx(2 / 40)


def test_classification_metrics_below_five_classes_report_no_top5_as_clip_benchmark_does():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 2.0, 1.0]])
    metrics = classification_metrics(logits, torch.tensor([0, 1, 2]))
    assert metrics["acc1"] == pytest.approx(2 / 3) and math.isnan(metrics["acc5"])
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 1 + 0) / 3)


# The official script's behaviour on the cases its normalisation exists for (and its quirks).
NORMALISED = {
    "Two": "2",
    "two dogs.": "2 dogs",
    "The dog": "dog",
    "a man, and a dog": "man and dog",  # ", " drops the comma
    "yes!": "yes",
    "dont": "don't",
    "it's 2.5": "it's 2.5",  # a period before a digit stays
    "10,000": "10000",  # a digit,digit comma: every mark removed, not spaced
    "black/white": "black white",  # a mark between words becomes a space
    "black / white": "black white",
    "  Yes \n": "yes",
    "none": "0",
    "red-and-white": "red and white",
    "Hes": "he's",  # lower-cased, then the contraction table
}


@pytest.mark.parametrize("raw", sorted(NORMALISED))
def test_vqa_normalisation_on_the_official_scripts_cases(raw):
    assert normalise_answer(raw) == NORMALISED[raw]


def test_vqa_accuracy_is_the_official_ten_way_leave_one_out():
    ten = ["2"] * 3 + ["3"] * 7
    # Against each nine: a "2" left out leaves 2 matches (2/3), a "3" left out leaves 3 (1).
    assert vqa_accuracy("two", ten) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    assert vqa_accuracy("3", ten) == 1.0
    assert vqa_accuracy("4", ten) == 0.0
    assert vqa_accuracy("2", ["2"] + ["1"] * 9) == pytest.approx(9 * (1 / 3) / 10)
    # Human answers are only punctuation-cleaned (not article-stripped), and only when they disagree.
    assert vqa_accuracy("the dog", ["the dog"] * 10) == 0.0  # the model's "the" is dropped, theirs is not
    assert vqa_accuracy("dog", ["dog"] * 5 + ["cat"] * 5) == 1.0
    # The script's quirk, kept: a mark not beside a space becomes one, so "dog!" is "dog " and
    # matches nothing (the published answers are clean already).
    assert vqa_accuracy("dog", ["dog!"] * 5 + ["cat"] * 5) == 0.0


@pytest.mark.parametrize(
    ("answer", "picked"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B. a cat", "B"),
        ("The answer is C.", "C"),
        ("a cat", "B"),  # the option's text
        ("A or B", ""),  # two letters: nothing
        ("I cannot tell", ""),  # "I" is not an option letter here
        ("", ""),
    ],
)
def test_multiple_choice_answers_pick_the_option_they_name(answer, picked):
    assert picked_option(answer, ["a dog", "a cat", "a bird"]) == picked


def test_options_are_shown_as_lettered_lines():
    assert format_options(["red", "blue"]) == "A. red\nB. blue"


CAPTIONS = [
    ("a man riding a horse", ["a man rides a horse on a beach", "a person on a horse", "man riding horse"]),
    ("two dogs play in the snow", ["two dogs playing in snow", "dogs running through the snow", "a pair of dogs"]),
    ("a plate of food", ["a plate with food on it", "a dish of pasta and vegetables", "food on a white plate"]),
    ("a red bus on the street", ["a red double decker bus", "a bus driving down the street", "the red bus"]),
]


def test_cider_equals_pycocoevalcaps():
    candidates = [caption_words(c) for c, _ in CAPTIONS]
    references = [[caption_words(r) for r in refs] for _, refs in CAPTIONS]
    theirs, their_scores = Cider().compute_score(
        {i: refs for i, refs in enumerate(references)}, {i: [c] for i, c in enumerate(candidates)}
    )
    mine, my_scores = cider(candidates, references)
    assert mine == pytest.approx(theirs, rel=1e-12)
    assert my_scores == pytest.approx(list(their_scores), rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from("a the dog cat red runs on grass big".split()), min_size=1, max_size=8),
            st.lists(
                st.lists(st.sampled_from("a the dog cat red runs on grass big small".split()), min_size=1, max_size=9),
                min_size=1,
                max_size=4,
            ),
        ),
        min_size=2,
        max_size=6,
    )
)
def test_cider_equals_pycocoevalcaps_on_any_captions(images):
    candidates = [" ".join(c) for c, _ in images]
    references = [[" ".join(r) for r in refs] for _, refs in images]
    theirs, _ = Cider().compute_score(
        {i: r for i, r in enumerate(references)}, {i: [c] for i, c in enumerate(candidates)}
    )
    assert cider(candidates, references)[0] == pytest.approx(theirs, rel=1e-9, abs=1e-12)


def test_the_linear_probe_separates_what_is_separable_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 32, generator=g) * 3
    train_labels, test_labels = torch.arange(200) % 4, torch.arange(80) % 4
    train = centres[train_labels] + torch.randn(200, 32, generator=g)
    test = centres[test_labels] + torch.randn(80, 32, generator=g)
    assert linear_probe(train, train_labels, test, test_labels, 4)["lp_acc1"] == 1.0
    noise = linear_probe(
        torch.randn(200, 32, generator=g), train_labels, torch.randn(80, 32, generator=g), test_labels, 4
    )
    assert noise["lp_acc1"] < 0.5
