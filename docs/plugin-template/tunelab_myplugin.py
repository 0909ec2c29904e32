"""tunelab-myplugin: a sampler and an evaluator, as a starting point for your own TuneLab plugin.

Every function marked with ``@hookimpl`` whose name is a TuneLab hook (see
docs/plugins.md) is called by TuneLab. A plugin needs only pluggy: the objects it
registers are plain namespaces with the attributes the hook's contract lists.
"""

from types import SimpleNamespace

import pluggy

hookimpl = pluggy.HookimplMarker("tunelab")
__version__ = "0.1.0"


def cold_kwargs(temperature=0.3):
    """Arguments for transformers' model.generate: sample, at a low temperature."""
    return {"do_sample": True, "temperature": temperature}


COLD = SimpleNamespace(
    name="cold",
    description="Sampling at a low temperature: nearly greedy, with a little variety.",
    params=[{"name": "temperature", "type": "float", "default": 0.3, "min": 0.05, "max": 1.0,
             "help": "Below 1 sharpens the distribution: the favourite token gets likelier. Lower is more "
                     "predictable; 1.0 is the model's own distribution."}],
    generation_kwargs=cold_kwargs,
)


def answer_words(samples, context, max_words=200):
    """The number of words in each answer, capped at max_words (a reference-free score)."""
    per_sample = [float(min(len((s["answer"] or "").split()), max_words)) for s in samples]
    mean = sum(per_sample) / len(per_sample) if per_sample else float("nan")
    return {"answer_words": mean, "per_sample": per_sample}


ANSWER_WORDS = SimpleNamespace(
    name="answer_words",
    description="Average answer length in words. Caveat: longer is not better; use it to spot a model that "
                "rambles or says too little.",
    higher_is_better=True,
    params=[{"name": "max_words", "type": "int", "default": 200, "min": 1, "max": 10000,
             "help": "Longer answers count as this many words, so one runaway answer does not swamp the mean."}],
    evaluate=answer_words,
)


@hookimpl
def register_samplers(register):
    register(COLD)


@hookimpl
def register_evaluators(register):
    register(ANSWER_WORDS)


# A lifecycle hook, for example (uncomment to use): print the loss every 10 steps.
# @hookimpl
# def on_log(run, metrics):
#     if metrics["step"] % 10 == 0:
#         print(f"step {metrics['step']}: loss {metrics['loss']:.3f}")
