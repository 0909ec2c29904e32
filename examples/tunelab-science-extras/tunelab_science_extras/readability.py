"""The ``readability`` evaluator: how easy the model's answers are to read (Flesch reading ease).

What it teaches: an evaluator does not need a reference answer. This one scores
the answer alone, with a formula from 1948:

    206.835 - 1.015 * (words / sentences) - 84.6 * (syllables / words)

Short sentences of short words score high (90-100: easy for an 11-year-old);
long sentences of long words score low (below 30: academic prose). It returns
the reference answers' score too, so "does the tuned model write at the level of
the training data?" has a number.

Samples it cannot score (answers shorter than ``min_words``) get NaN and are
left out of the average, the TuneLab convention. Self-contained: the syllable
counter is a heuristic (vowel groups, a silent final e), right for most English
words and off by one for some; no dictionary is needed.
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pluggy

hookimpl = pluggy.HookimplMarker("tunelab")

WORD_RE = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*")
SENTENCE_END_RE = re.compile(r"[.!?]+(?=\s|$)|\n+")  # "3.5" is not a sentence end; a line break is


def syllables(word: str) -> int:
    """Vowel groups in ``word``, less a silent final e; at least 1 ("the" 1, "table" 2, "water" 2)."""
    word = re.sub(r"[^a-z]", "", word.lower())
    if not word:
        return 0
    count = len(re.findall(r"[aeiouy]+", word))
    if count > 1 and word.endswith("e") and not word.endswith(("le", "ee", "ye")):
        count -= 1  # "make", "cause": the final e is silent; "table", "free": it is not
    return max(1, count)


def counts(text: str) -> tuple[int, int, int]:
    """``(sentences, words, syllables)`` of ``text``."""
    words = WORD_RE.findall(text or "")
    sentences = sum(1 for part in SENTENCE_END_RE.split(text or "") if WORD_RE.search(part))
    return max(1, sentences) if words else 0, len(words), sum(syllables(w) for w in words)


def flesch_reading_ease(text: str, min_words: int = 1) -> float:
    """The Flesch reading ease of ``text``; NaN when it has fewer than ``min_words`` words."""
    sentences, words, syl = counts(text)
    if words < max(1, min_words):
        return float("nan")
    return 206.835 - 1.015 * (words / sentences) - 84.6 * (syl / words)


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def readability(samples, context, min_words: int = 3):
    """Flesch reading ease of each answer (and the mean of the references', for comparison)."""
    per_sample = [flesch_reading_ease(s.get("answer") or "", min_words) for s in samples]
    references = [flesch_reading_ease(s.get("reference") or "", min_words) for s in samples]
    return {"readability": _mean(per_sample), "reference_readability": _mean(references),
            "per_sample": per_sample}


READABILITY = SimpleNamespace(
    name="readability",
    description="Flesch reading ease of the answers: higher means shorter sentences and shorter words, easier "
                "to read (60-70 is plain English, above 90 a children's book). It needs no reference; "
                "reference_readability gives the level of the reference answers to compare against. Caveat: it "
                "measures form, not correctness, and a wrong answer in short words scores well.",
    higher_is_better=True,
    params=[{"name": "min_words", "type": "int", "default": 3, "min": 1, "max": 100,
             "help": "Answers with fewer words are not scored (NaN, left out of the average): a formula "
                     "about sentence length means nothing for a one-word answer."}],
    evaluate=readability,
)


@hookimpl
def register_evaluators(register):
    register(READABILITY)
