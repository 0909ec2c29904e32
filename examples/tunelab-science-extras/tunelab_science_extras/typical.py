"""The ``typical_p`` sampler: locally typical sampling (Meister et al., 2022).

What it teaches: top-k, top-p and min-p all keep the *most likely* tokens. Typical
sampling keeps the tokens whose surprise is closest to the *average* surprise of
the distribution (its entropy). When the model is sure, that is the favourite;
when it is unsure, the favourite may be left out in favour of tokens that are
"as informative as expected", which avoids both dull and wild text.

transformers implements it (``TypicalLogitsWarper``); a sampler only returns
``typical_p`` in its generation arguments and ``model.generate`` applies it.
TuneLab's next-token chart runs the same warper, so the Generate page shows
which tokens survive.
"""

from __future__ import annotations

from types import SimpleNamespace

import pluggy

hookimpl = pluggy.HookimplMarker("tunelab")


def generation_kwargs(typical_p: float = 0.9, temperature: float = 1.0) -> dict:
    """Keyword arguments for ``model.generate``: sample, after the typical-set filter."""
    return {"do_sample": True, "typical_p": typical_p, "temperature": temperature}


TYPICAL_P = SimpleNamespace(
    name="typical_p",
    description="Locally typical sampling: keep the tokens whose surprise is closest to the model's average "
                "surprise (the entropy), not simply the most likely ones, then sample among them.",
    params=[
        {"name": "typical_p", "type": "float", "default": 0.9, "min": 0.05, "max": 1.0,
         "help": "How much probability the typical set keeps. Each token's surprise is -log p; the average "
                 "surprise over all tokens is the entropy. Tokens are ranked by how far their surprise is from "
                 "that average, and the closest are kept until their probabilities add up to typical_p. When "
                 "the model is sure, that keeps the favourite; when it is unsure, even the favourite can be "
                 "cut for being too predictable. 1.0 keeps everything; 0.2 to 0.95 is the useful range."},
        {"name": "temperature", "type": "float", "default": 1.0, "min": 0.05, "max": 2.0,
         "help": "Reshapes the distribution before the typical-set filter: below 1 sharpens it (more "
                 "predictable), above 1 flattens it (more varied)."},
    ],
    generation_kwargs=generation_kwargs,
)


@hookimpl
def register_samplers(register):
    register(TYPICAL_P)
