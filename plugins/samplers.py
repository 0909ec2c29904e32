"""Built-in samplers: how the model picks each next token.

At every step the model scores every token in its vocabulary; a softmax turns
the scores into a probability distribution over "what comes next". A sampler
decides how to pick from that distribution. Each one here only says which
``model.generate`` arguments to use (``generation_kwargs``); TuneLab's
``tunelab.core.generate`` applies exactly those, and draws the same transformation on
the Generate lesson's before/after chart.

Written exactly as a third-party plugin would be: only pluggy, no ``core``.
"""

from types import SimpleNamespace

import pluggy

hookimpl = pluggy.HookimplMarker("tunelab")

# Shared param specs: each help text says what the knob does to the next-token distribution.
TEMPERATURE = {
    "name": "temperature", "type": "float", "default": 0.7, "min": 0.05, "max": 2.0,
    "help": "Divides the model's scores before the softmax. Below 1 sharpens the distribution (the likely "
            "tokens get even likelier: focused, repetitive text); above 1 flattens it (unlikely tokens get a "
            "real chance: varied, riskier text). 1 leaves it unchanged.",
}
REPETITION_PENALTY = {
    "name": "repetition_penalty", "type": "float", "default": 1.0, "min": 1.0, "max": 2.0,
    "help": "Lowers the score of every token that already appears in the prompt or the answer so far, so "
            "the model is less likely to repeat itself. 1 means no penalty; 1.1-1.3 is typical. Too high "
            "and it avoids even words it needs.",
}


def _with_temperature(default: float) -> dict:
    """The temperature spec with another default (1.0 = the filter alone, unchanged scores)."""
    return {**TEMPERATURE, "default": default}


def greedy_kwargs(repetition_penalty=1.0):
    return {"do_sample": False, "num_beams": 1, "repetition_penalty": repetition_penalty}


def temperature_kwargs(temperature=0.7, repetition_penalty=1.0):
    return {"do_sample": True, "temperature": temperature, "repetition_penalty": repetition_penalty}


def top_k_kwargs(top_k=40, temperature=1.0, repetition_penalty=1.0):
    return {"do_sample": True, "top_k": top_k, "temperature": temperature, "repetition_penalty": repetition_penalty}


def top_p_kwargs(top_p=0.9, temperature=1.0, repetition_penalty=1.0):
    return {"do_sample": True, "top_p": top_p, "temperature": temperature, "repetition_penalty": repetition_penalty}


def min_p_kwargs(min_p=0.05, temperature=1.0, repetition_penalty=1.0):
    return {"do_sample": True, "min_p": min_p, "temperature": temperature, "repetition_penalty": repetition_penalty}


def beam_kwargs(num_beams=4, length_penalty=1.0):
    # early_stopping: finish as soon as num_beams complete answers exist, instead of searching on.
    return {"do_sample": False, "num_beams": num_beams, "length_penalty": length_penalty, "early_stopping": True}


SAMPLERS = [
    SimpleNamespace(
        name="greedy",
        description="Always take the single most likely next token. Deterministic: the same prompt gives "
                    "the same answer every time, but it can get stuck in loops.",
        params=[REPETITION_PENALTY],
        generation_kwargs=greedy_kwargs,
    ),
    SimpleNamespace(
        name="temperature",
        description="Sample from the whole distribution after reshaping it with a temperature: every token "
                    "keeps a chance, in proportion to its (sharpened or flattened) probability.",
        params=[TEMPERATURE, REPETITION_PENALTY],
        generation_kwargs=temperature_kwargs,
    ),
    SimpleNamespace(
        name="top_k",
        description="Keep only the k most likely tokens, renormalise, and sample among them: the long tail "
                    "of unlikely tokens can never be picked.",
        params=[{"name": "top_k", "type": "int", "default": 40, "min": 1, "max": 200,
                 "help": "How many of the most likely tokens stay in the running. Every other token gets "
                         "probability 0 and the k survivors are rescaled to sum to 1. Small k is safe but "
                         "dull; large k lets rarer words in. k = 1 is greedy."},
                _with_temperature(1.0), REPETITION_PENALTY],
        generation_kwargs=top_k_kwargs,
    ),
    SimpleNamespace(
        name="top_p",
        description="Nucleus sampling: keep the smallest set of likely tokens whose probabilities add up to "
                    "p, renormalise, and sample among them. The set shrinks when the model is sure and grows "
                    "when it is not.",
        params=[{"name": "top_p", "type": "float", "default": 0.9, "min": 0.05, "max": 1.0,
                 "help": "The share of probability to keep. Tokens are taken from the most likely down until "
                         "their probabilities add up to p; the rest get probability 0. 0.9 keeps the "
                         "tokens that make up 90% of the probability; 1.0 keeps everything."},
                _with_temperature(1.0), REPETITION_PENALTY],
        generation_kwargs=top_p_kwargs,
    ),
    SimpleNamespace(
        name="min_p",
        description="Keep every token at least min_p times as likely as the most likely one, renormalise, "
                    "and sample among them. Like top-p, it adapts to how sure the model is.",
        params=[{"name": "min_p", "type": "float", "default": 0.05, "min": 0.0, "max": 1.0,
                 "help": "The cut-off relative to the favourite: with 0.1, a token survives only if its "
                         "probability is at least a tenth of the top token's. Higher values cut more of the "
                         "tail; 0 keeps everything."},
                _with_temperature(1.0), REPETITION_PENALTY],
        generation_kwargs=min_p_kwargs,
    ),
    SimpleNamespace(
        name="beam",
        description="Beam search: keep the N best partial answers at each step (scored by their total "
                    "probability) and return the best finished one. Deterministic, good for short exact "
                    "answers, slower, and it does not sample, so the next-token distribution is shown as is.",
        params=[{"name": "num_beams", "type": "int", "default": 4, "min": 1, "max": 8,
                 "help": "How many partial answers to keep at each step. It does not reshape the next-token "
                         "distribution: it looks further ahead, so a token that is second-best now can win "
                         "if it leads to a likelier answer overall. 1 is greedy; more beams cost more time."},
                {"name": "length_penalty", "type": "float", "default": 1.0, "min": 0.0, "max": 2.0,
                 "help": "How beams of different lengths are compared: above 1 favours longer answers, "
                         "below 1 shorter ones."}],
        generation_kwargs=beam_kwargs,
    ),
]


@hookimpl
def register_samplers(register):
    for sampler in SAMPLERS:
        register(sampler)
