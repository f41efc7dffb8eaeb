"""CIDEr-D as the COCO caption evaluation computes it (pycocoevalcap's `Cider`: n-grams 1-4, tf-idf
weights from the references of the whole test set, a Gaussian length penalty with sigma 6, the
candidate's n-gram counts clipped by the reference's, x10), so a score compares with a published one.

Captions are compared as lower-case words with punctuation removed (COCO runs the PTB tokenizer, a
Java program, first; this is the same text for plain captions). Checked against pycocoevalcap's own
`Cider` in tests/unit/test_benchmark_metrics.py.
"""

from __future__ import annotations

import math
import re
from collections import Counter

MAX_N = 4
SIGMA = 6.0
PUNCTUATION = re.compile(r"[^\w\s']|_")


def caption_words(text: str) -> str:
    """A caption as the words CIDEr counts."""
    return " ".join(PUNCTUATION.sub(" ", text.lower()).split())


def ngram_counts(words: list[str]) -> Counter:
    return Counter(tuple(words[i : i + n]) for n in range(1, MAX_N + 1) for i in range(len(words) - n + 1))


def cider(candidates: list[str], references: list[list[str]]) -> tuple[float, list[float]]:
    """(corpus CIDEr-D, per-caption scores) of one candidate caption per image against that image's
    references. Document frequencies come from these references alone, so the score depends on the
    whole set (as published numbers do: compare scores over the same images only)."""
    if len(candidates) != len(references) or not candidates:
        raise ValueError(
            f"CIDEr needs one candidate per image and references for each: {len(candidates)} vs {len(references)}"
        )
    if any(not refs for refs in references):
        raise ValueError("every image needs at least one reference caption for CIDEr")
    test = [ngram_counts(caption_words(c).split()) for c in candidates]
    refs = [[ngram_counts(caption_words(r).split()) for r in image_refs] for image_refs in references]
    document_frequency = Counter(ngram for image_refs in refs for ngram in {g for r in image_refs for g in r})
    log_images = math.log(float(len(refs)))
    scores = []
    for candidate, image_refs in zip(test, refs):
        vector, norm, length = _tfidf(candidate, document_frequency, log_images)
        total = [0.0] * MAX_N
        for ref in image_refs:
            ref_vector, ref_norm, ref_length = _tfidf(ref, document_frequency, log_images)
            for n, value in enumerate(_similarity(vector, ref_vector, norm, ref_norm, length - ref_length)):
                total[n] += value
        scores.append(sum(total) / MAX_N / len(image_refs) * 10.0)
    return sum(scores) / len(scores), scores


def _tfidf(counts: Counter, document_frequency: Counter, log_images: float):
    """Per n: {ngram: tf-idf}, the vector norms, and the length the penalty compares."""
    vector = [{} for _ in range(MAX_N)]
    squares = [0.0] * MAX_N
    length = 0
    for ngram, term_frequency in counts.items():
        n = len(ngram) - 1
        weight = float(term_frequency) * (log_images - math.log(max(1.0, document_frequency[ngram])))
        vector[n][ngram] = weight
        squares[n] += weight * weight
        if n == 1:  # the reference counts bigrams as a caption's length; kept, to match its scores
            length += term_frequency
    return vector, [math.sqrt(s) for s in squares], length


def _similarity(vector, ref_vector, norm, ref_norm, length_delta: int) -> list[float]:
    penalty = math.exp(-(length_delta**2) / (2 * SIGMA**2))
    values = []
    for n in range(MAX_N):
        value = sum(
            min(weight, ref_vector[n].get(g, 0.0)) * ref_vector[n].get(g, 0.0) for g, weight in vector[n].items()
        )
        if norm[n] != 0 and ref_norm[n] != 0:
            value /= norm[n] * ref_norm[n]
        values.append(value * penalty)
    return values
