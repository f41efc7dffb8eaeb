"""VQA accuracy as the official VQA evaluation script computes it (GT-Vision-Lab/VQA,
PythonEvaluationTools/vqaEvaluation/vqaEval.py), so that a score here compares with a published one.

The script's behaviour is kept exactly, quirks included, each said where it happens:
- the model's answer is normalised fully (punctuation, then number words, articles, contractions);
  the ten human answers only get the punctuation pass, and only when they disagree;
- accuracy is min(1, matches/3) against each set of nine of the ten answers, averaged over the ten.
"""

from __future__ import annotations

import re

# Answers are compared after these spellings are made one.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The script's pattern, as written: `(?!<=\d)` is a lookahead (a lookbehind was meant), so a period
# is dropped unless a digit follows it ("2.5" keeps its period, "5." does not).
PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The script passes re.UNICODE (32) where `sub` takes its count: at most 32 periods are dropped.
PERIODS_DROPPED = 32
HUMAN_ANSWERS_MATCHED_FOR_FULL_CREDIT = 3


def strip_punctuation(text: str) -> str:
    """The script's processPunctuation: a mark beside a space (or any mark, once the text holds a
    digit,digit comma) is removed; otherwise it becomes a space."""
    out = text
    remove_all = DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if remove_all or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD.sub("", out, count=PERIODS_DROPPED)


def normalise_words(text: str) -> str:
    """The script's processDigitArticle: lower case, number words to digits, articles dropped,
    contractions given their apostrophes."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalise_answer(text: str) -> str:
    """A model's answer, as the script compares it."""
    return normalise_words(strip_punctuation(clean_whitespace(text)))


def vqa_accuracy(answer: str, human_answers: list[str]) -> float:
    """One question's accuracy in [0, 1] (the script reports 100x the mean over questions)."""
    if not human_answers:
        raise ValueError("a VQA question needs its human answers (usually ten)")
    humans = [clean_whitespace(a) for a in human_answers]
    if len(set(humans)) > 1:
        humans = [strip_punctuation(a) for a in humans]
    mine = normalise_answer(answer)
    matches = sum(human == mine for human in humans)
    # Leaving out answer i removes one match when answer i itself matches.
    per_subset = [min(1.0, (matches - (human == mine)) / HUMAN_ANSWERS_MATCHED_FOR_FULL_CREDIT) for human in humans]
    return sum(per_subset) / len(per_subset)
