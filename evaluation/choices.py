"""The option a multiple-choice answer picks (MMBench, ScienceQA, SEED style questions).

Models answer "B", "(B)", "B. a cat", "The answer is B." or repeat an option's text; this finds the
one option such an answer names, in the order VLMEvalKit's `can_infer` tries: a letter standing
alone, then an option's text. An answer that names none, or more than one, picks nothing and is
counted wrong (and counted, so a prompt that the model does not follow shows).
"""

from __future__ import annotations

import re

LETTERS = "ABCDEFGHIJ"
# Marks around a letter that still leave it standing alone: "(B)", "B.", "B:", "'B'".
SEPARATORS = re.compile(r"[\s.,:;!?()\[\]{}'\"*]+")


def option_letters(options: list[str]) -> str:
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"a multiple-choice question needs 2 to {len(LETTERS)} options, got {len(options)}")
    return LETTERS[: len(options)]


def format_options(options: list[str]) -> str:
    """ "A. first\nB. second" as LLaVA's and MMBench's prompts show them."""
    return "\n".join(f"{letter}. {text}" for letter, text in zip(option_letters(options), options))


def picked_option(answer: str, options: list[str]) -> str:
    """The letter of the option the answer names, or "" when it names none or several."""
    letters = option_letters(options)
    tokens = [token for token in SEPARATORS.split(answer.strip()) if token]
    named = {token for token in tokens if len(token) == 1 and token in letters}
    if len(named) == 1:
        return named.pop()
    if named:  # "A or B": several letters named
        return ""
    text = " ".join(answer.lower().split())
    matching = [letter for letter, option in zip(letters, options) if option.strip() and option.lower().strip() in text]
    return matching[0] if len(matching) == 1 else ""
