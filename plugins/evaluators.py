"""Built-in evaluators: numbers that say how good a model's answers are, each with its blind spots.

Every evaluator gets the held-out samples (``prompt``, ``reference``, ``answer``,
``messages``) and a ``context`` dict (``model``, ``tokenizer``, ``max_length``,
``encode``), and returns ``{metric: value, "per_sample": [one score per sample]}``.
A score that cannot be computed for a sample is NaN and left out of the average.

Written exactly as a third-party plugin would be: only pluggy (and torch for
perplexity), no ``core``.
"""

import math
import re
from types import SimpleNamespace

import pluggy

hookimpl = pluggy.HookimplMarker("tunelab")

WORD_RE = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lowercased word tokens: letters and digits, punctuation dropped."""
    return WORD_RE.findall((text or "").lower())


def mean(values) -> float:
    """Average of the scores that exist (NaN = not computable for that sample)."""
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


# -- perplexity ---------------------------------------------------------------------------

def perplexity(samples, context):
    """exp(mean negative log-likelihood) of the reference answers, tokens weighted equally."""
    import torch
    import torch.nn.functional as F

    model, encode = context["model"], context.get("encode")
    if encode is None:
        raise ValueError("perplexity needs context['encode'] (messages -> input_ids, labels)")
    device = next(model.parameters()).device
    per_sample, total_nll, total_tokens = [], 0.0, 0
    model.eval()
    for sample in samples:
        encoded = encode(sample["messages"])
        ids = torch.tensor([encoded["input_ids"]], device=device)
        labels = torch.tensor([encoded["labels"]], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
        # Position t predicts token t+1; labels are -100 on the prompt, so only the answer counts,
        # exactly as in training.
        nll = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum").item()
        n = int((labels[0, 1:] != -100).sum())
        per_sample.append(math.exp(nll / n) if n else float("nan"))
        total_nll, total_tokens = total_nll + nll, total_tokens + n
    loss = total_nll / total_tokens if total_tokens else float("nan")
    return {"perplexity": math.exp(loss), "loss": loss, "per_sample": per_sample}


# -- exact match --------------------------------------------------------------------------

def normalise(text: str) -> str:
    """Lowercase, punctuation dropped, whitespace collapsed: 'Paris.' and ' paris' compare equal."""
    return " ".join(words(text))


def exact_match(samples, context):
    per_sample = [float(normalise(s["answer"]) == normalise(s["reference"])) for s in samples]
    return {"exact_match": mean(per_sample), "per_sample": per_sample}


# -- ROUGE-L ------------------------------------------------------------------------------

def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence (in order, gaps allowed) of two word lists."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0  # row[j-1] of the previous row
        for j, y in enumerate(b, start=1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l_f1(answer: str, reference: str) -> float:
    """ROUGE-L F1: harmonic mean of LCS/answer-length (precision) and LCS/reference-length (recall)."""
    a, r = words(answer), words(reference)
    if not a or not r:
        return float(a == r)  # both empty: a perfect match; one empty: nothing in common
    lcs = lcs_length(a, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(samples, context):
    per_sample = [rouge_l_f1(s["answer"], s["reference"]) for s in samples]
    return {"rouge_l": mean(per_sample), "per_sample": per_sample}


# -- keyword coverage ---------------------------------------------------------------------

# Common English words that carry little meaning on their own (words under 4 letters are dropped anyway).
STOPWORDS = set("""
about above after again against also among another anyone anything around because been before being below
between both cannot could does doing done down during each either else enough even ever every from further
have having here hers herself himself however into itself just know like made make many might more most much
must myself near need never next none only other ought ours ourselves over own quite rather really said same
shall should since some such than that their theirs them themselves then there these they thing things this
those though through thus together too under until upon very want well were what whatever when where whether
which while whom whose will with within without would your yours yourself yourselves also always often
usually still
""".split())


def keywords(text: str, max_keywords: int = 12) -> list[str]:
    """The content words of ``text``: lowercased, stopwords and words under 4 letters dropped, deduplicated."""
    found = []
    for word in words(text):
        if len(word) >= 4 and word not in STOPWORDS and not word.isdigit() and word not in found:
            found.append(word)
    return found[:max_keywords]


def keyword_coverage(samples, context, max_keywords=12):
    per_sample = []
    for s in samples:
        wanted = keywords(s["reference"], max_keywords)
        have = set(words(s["answer"]))
        per_sample.append(sum(w in have for w in wanted) / len(wanted) if wanted else float("nan"))
    return {"keyword_coverage": mean(per_sample), "per_sample": per_sample}


# -- house style --------------------------------------------------------------------------

LESSON_HEADINGS = "Definition, How it works, Everyday example, Key terms"


def house_style(samples, context, headings=LESSON_HEADINGS):
    """1 for an answer that has every heading, in order, each at the start of a line (bold or not)."""
    wanted = [h.strip().lower() for h in headings.split(",") if h.strip()]
    per_sample = []
    for s in samples:
        lines = [line.strip().strip("*#_ ").lower() for line in (s["answer"] or "").splitlines()]
        found, position = 0, 0
        for heading in wanted:
            hit = next((i for i in range(position, len(lines)) if lines[i].startswith(heading)), None)
            if hit is None:
                break
            found, position = found + 1, hit + 1
        per_sample.append(float(found == len(wanted)) if wanted else float("nan"))
    return {"house_style": mean(per_sample), "per_sample": per_sample}


EVALUATORS = [
    SimpleNamespace(
        name="perplexity",
        description="How surprised the model is by the reference answers: exp of the average loss per answer "
                    "token, computed exactly as in training (prompt tokens masked). Lower is better; 1 would be "
                    "certainty. It scores the model, not its generated answers, so the sampler does not matter. "
                    "Caveat: only comparable between models that share a tokenizer.",
        higher_is_better=False,
        params=[],
        evaluate=perplexity,
    ),
    SimpleNamespace(
        name="exact_match",
        description="Share of answers identical to the reference, ignoring case, punctuation and spacing. Right "
                    "for short factual answers (a name, a number, a label); near zero for free text, where "
                    "many wordings are correct.",
        higher_is_better=True,
        params=[],
        evaluate=exact_match,
    ),
    SimpleNamespace(
        name="rouge_l",
        description="Word overlap with the reference: the longest run of words the answer and the reference "
                    "share in the same order (gaps allowed), as an F1 score from 0 to 1. Caveat: it rewards "
                    "wording, not meaning; a correct paraphrase scores low.",
        higher_is_better=True,
        params=[],
        evaluate=rouge_l,
    ),
    SimpleNamespace(
        name="keyword_coverage",
        description="Share of the reference's key words (its content words of 4+ letters, common words "
                    "removed) that appear in the answer. Caveat: exact words only (no synonyms or plurals), "
                    "and a long rambling answer can cover many words without being right.",
        higher_is_better=True,
        params=[{"name": "max_keywords", "type": "int", "default": 12, "min": 1, "max": 100,
                 "help": "How many key words to take from each reference, in order of appearance. Fewer "
                         "focuses on the opening of the reference."}],
        evaluate=keyword_coverage,
    ),
    SimpleNamespace(
        name="house_style",
        description="Share of answers written in the house style: every required heading present, in order, "
                    "each starting a line. The bundled lesson teaches Definition / How it works / Everyday "
                    "example / Key terms; set your own headings for your data. Caveat: checks the shape, not "
                    "whether what is under each heading is right.",
        higher_is_better=True,
        params=[{"name": "headings", "type": "str", "default": LESSON_HEADINGS,
                 "help": "The headings every answer should have, comma-separated, in order."}],
        evaluate=house_style,
    ),
]


@hookimpl
def register_evaluators(register):
    for evaluator in EVALUATORS:
        register(evaluator)
