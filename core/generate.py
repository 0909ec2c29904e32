"""Generate: turn a prompt into an answer through a sampler plugin, and show how samplers pick.

A chat model answers a prompt one token at a time. At each step it scores the
whole vocabulary; a *sampler* (greedy, temperature, top-k, top-p, min-p, beam,
or a plugin's own) decides which token comes next. The answer ends when the
model emits its end-of-turn token (``<|im_end|>`` in ChatML models), or after
``max_new_tokens``.

- :func:`generate` runs ``model.generate`` with the sampler's arguments.
- :func:`next_token_distribution` shows one step: the model's raw next-token
  probabilities, and the same probabilities after the sampler reshaped them.

A sampler is a plugin's code: its settings, its logits processors (each wrapped, since they
run deep inside ``model.generate``) and the warpers its settings ask for run under the
registry's guard, so a broken sampler is a ``PluginError`` naming it, never a traceback.

No Streamlit here: the dashboard wraps these (``st.write_stream`` for streaming).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .registry import get_registry, resolve_params

# torch is imported inside the functions that run a model: the CLI checks a sampler and its settings
# (and refuses a bad one) in a fraction of a second, before torch would have loaded.
if TYPE_CHECKING:
    import torch

# What generate() passes under the sampler's own kwargs. transformers fills any setting
# left out from the model's generation_config.json (Qwen ships top_k=20, top_p=0.8,
# repetition_penalty=1.05) and then from global defaults (top_k=50): a "temperature"
# sampler would silently be temperature + top-k. These neutral values make what the
# learner picked exactly what runs, and exactly what the chart shows.
NEUTRAL = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0}
NEUTRAL_SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0}

END_OF_TURN = "<|im_end|>"  # ChatML's end of an assistant turn (SmolLM2, Qwen, TuneLab's fallback template)


def as_messages(prompt, system: str | None = None) -> list[dict]:
    """A prompt as chat messages: a string becomes one user turn; ``system`` is put first if missing."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def build_prompt(tokenizer, prompt, system: str | None = None) -> torch.Tensor:
    """Token ids (shape ``1 x length``) of the chat-templated prompt, ending where the assistant starts.

    ``add_generation_prompt=True`` appends the assistant header (``<|im_start|>assistant``),
    so the model's next token is the first token of its answer.
    """
    encoded = tokenizer.apply_chat_template(as_messages(prompt, system), add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
    return encoded["input_ids"]


def stop_token_ids(tokenizer) -> list[int]:
    """The ids that end an answer: the tokenizer's EOS, and ``<|im_end|>`` when it is one token.

    A base tokenizer's EOS is often ``<|endoftext|>`` (end of a document) while a chat
    template ends each turn with ``<|im_end|>``; stopping only on the first, the model
    would run past its answer and invent the user's next turn.
    """
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    im_end = tokenizer.convert_tokens_to_ids(END_OF_TURN) if END_OF_TURN in tokenizer.get_vocab() else None
    if im_end is not None and im_end not in ids:
        ids.append(im_end)
    return ids


def get_sampler(name: str, registry=None):
    """The sampler plugin object registered under ``name`` (UserError listing the installed ones if unknown)."""
    return (registry or get_registry()).get("samplers", name)


def sampler_settings(sampler: str = "greedy", params: dict | None = None, registry=None):
    """``(generation kwargs, extra logits processors)`` for a sampler and its params, neutral defaults included.

    The plugin's functions run under the registry's guard; each of its processors is wrapped
    (:class:`AttributedProcessor`) so that one failing inside ``model.generate`` names the plugin too.
    """
    registry = registry or get_registry()
    plugin = get_sampler(sampler, registry)
    values = resolve_params(plugin.params, params)
    with registry.guard("samplers", sampler, "generation_kwargs"):
        own = plugin.generation_kwargs(**values)
        if not isinstance(own, dict) or not all(isinstance(k, str) for k in own):
            raise TypeError(f"generation_kwargs returned {str(own)[:80]!r}, not a dict of keyword arguments")
    kwargs = {**NEUTRAL, **own}
    if kwargs.get("do_sample"):
        kwargs = {**NEUTRAL_SAMPLING, **kwargs}
    extra = getattr(plugin, "logits_processors", None)
    if not extra:
        return kwargs, []
    with registry.guard("samplers", sampler, "logits_processors"):
        processors = list(extra(**values))
        if not all(callable(p) for p in processors):
            raise TypeError("logits_processors returned something that is not a callable (a LogitsProcessor)")
    return kwargs, [AttributedProcessor(p, sampler, registry) for p in processors]


class AttributedProcessor:
    """A sampler plugin's logits processor, run under the registry's guard.

    It is called by transformers, many frames inside ``model.generate``; a ``ZeroDivisionError``
    there would otherwise come out of transformers with no word of the plugin it came from.
    ``__call__`` takes exactly ``(input_ids, scores)``, as ``LogitsProcessorList`` calls it.
    """

    def __init__(self, processor, sampler: str, registry):
        self.processor, self.sampler, self.registry = processor, sampler, registry

    def __call__(self, input_ids, scores):
        with self.registry.guard("samplers", self.sampler, f"logits processor {type(self.processor).__name__}"):
            result = self.processor(input_ids, scores)
            if getattr(result, "shape", None) != scores.shape:
                raise TypeError(f"returned {type(result).__name__}, not the scores tensor of shape {tuple(scores.shape)}")
            return result


def checked_settings(sampler: str, kwargs: dict, registry=None) -> None:
    """Check the sampler's settings the way ``model.generate`` will use them, naming the plugin on failure:
    every key must be a generation setting, and the warpers they ask for must build (a temperature of 0
    fails here, not deep inside generation)."""
    import inspect

    from transformers import GenerationConfig, GenerationMixin

    registry = registry or get_registry()
    known = set(GenerationConfig().to_dict()) | set(inspect.signature(GenerationMixin.generate).parameters)
    with registry.guard("samplers", sampler, "generation_kwargs"):
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"returned {', '.join(unknown)}, which model.generate does not take")
        sampling_processors(kwargs)


def decoding_arguments(tokenizer, sampler: str = "greedy", params: dict | None = None,
                       max_new_tokens: int = 200, registry=None) -> dict:
    """The sampler's ``model.generate`` arguments plus where to stop and how to pad.

    Shared by one prompt (:func:`generate`) and a batch (:func:`generate_batch`).
    pad: when the tokenizer has none, reuse EOS (most chat tokenizers already do: pad = eos).
    """
    from transformers import LogitsProcessorList

    kwargs, extra = sampler_settings(sampler, params, registry)
    checked_settings(sampler, kwargs, registry)
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else None)
    return {**kwargs, "max_new_tokens": max_new_tokens, "eos_token_id": stops, "pad_token_id": pad,
            "logits_processor": LogitsProcessorList(extra)}


def generate_arguments(model, tokenizer, prompt, sampler: str = "greedy", params: dict | None = None,
                       max_new_tokens: int = 200, system: str | None = None, registry=None) -> dict:
    """Everything :func:`generate` passes to ``model.generate`` (inputs included), for tests and the curious."""
    import torch

    input_ids = build_prompt(tokenizer, prompt, system).to(_device(model))
    # The all-ones attention mask is passed so generate() never guesses it from pad ids: a guess
    # would hide every pad = EOS id inside the prompt (each earlier <|im_end|>) from the model.
    return {**decoding_arguments(tokenizer, sampler, params, max_new_tokens, registry),
            "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def generate(model, tokenizer, prompt, sampler: str = "greedy", params: dict | None = None,
             max_new_tokens: int = 200, seed: int = 0, stream: bool = False, system: str | None = None,
             registry=None):
    """The model's answer to ``prompt`` (a string or a list of chat messages), as text.

    ``sampler`` names a sampler plugin and ``params`` its settings (defaults fill the
    rest). Generation stops at the end-of-turn token, which is not part of the text.
    ``seed`` makes sampling reproducible. With ``stream=True`` it returns an iterator of
    text pieces as they are produced (for ``st.write_stream``) instead of a string.
    """
    import torch

    kwargs = generate_arguments(model, tokenizer, prompt, sampler, params, max_new_tokens, system, registry)
    if stream and kwargs["num_beams"] == 1:
        return _stream(model, tokenizer, kwargs, seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(**kwargs)
    answer = tokenizer.decode(output[0, kwargs["input_ids"].shape[1]:], skip_special_tokens=True)
    # Beam search cannot stream (it only knows the winner at the end): yield the answer in one piece.
    return iter([answer]) if stream else answer


def generate_batch(model, tokenizer, prompts: list, sampler: str = "greedy", params: dict | None = None,
                   max_new_tokens: int = 200, seed: int = 0, batch_size: int = 8, system: str | None = None,
                   registry=None, progress=None) -> list[str]:
    """Answers to many prompts, ``batch_size`` at a time: what evaluation uses.

    On a CPU one prompt at a time leaves the matrix units mostly idle; a batch of
    eight costs little more per step than one. Prompts are padded on the left so
    every answer starts at the same position, and the attention mask hides the pads.
    ``progress(done, total)`` is called after each batch.
    """
    import torch

    kwargs = decoding_arguments(tokenizer, sampler, params, max_new_tokens, registry)
    pad = kwargs["pad_token_id"] if kwargs["pad_token_id"] is not None else 0
    device = _device(model)
    answers = []
    for start in range(0, len(prompts), batch_size):
        chunk = [build_prompt(tokenizer, p, system)[0].tolist() for p in prompts[start: start + batch_size]]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
        torch.manual_seed(seed + start)
        with torch.no_grad():
            output = model.generate(**kwargs, input_ids=input_ids, attention_mask=mask)
        answers += [tokenizer.decode(row[width:], skip_special_tokens=True) for row in output]
        if progress:
            progress(len(answers), len(prompts))
    return answers


def _stream(model, tokenizer, kwargs: dict, seed: int):
    """Run generate() in a thread and yield its text as the streamer receives tokens."""
    import torch
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors = []

    def work():
        try:
            torch.manual_seed(seed)
            with torch.no_grad():
                model.generate(**kwargs, streamer=streamer)
        except Exception as exc:  # noqa: BLE001 - re-raised in the reader's thread below
            errors.append(exc)
            streamer.end()  # unblock the reader, which would otherwise wait forever

    def pieces():
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        for piece in streamer:
            if piece:
                yield piece
        thread.join()
        if errors:
            raise errors[0]

    return pieces()


def sampling_processors(kwargs: dict, extra=()) -> list:
    """The logits processors ``model.generate`` runs for these kwargs, in its order.

    Mirrors transformers: the repetition penalty, then the plugin's ``extra``
    processors, then (only when sampling) temperature, top-k, top-p, min-p.
    Used to draw what a sampler does to one step.
    """
    from transformers import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper)

    out = []
    if kwargs.get("repetition_penalty", 1.0) != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(kwargs["repetition_penalty"]))
    out.extend(extra)
    if not kwargs.get("do_sample"):
        return out
    if kwargs.get("temperature", 1.0) != 1.0:
        out.append(TemperatureLogitsWarper(kwargs["temperature"]))
    if kwargs.get("top_k"):
        out.append(TopKLogitsWarper(kwargs["top_k"]))
    if kwargs.get("top_p", 1.0) < 1.0:
        out.append(TopPLogitsWarper(kwargs["top_p"]))
    if kwargs.get("min_p"):
        out.append(MinPLogitsWarper(kwargs["min_p"]))
    if kwargs.get("typical_p", 1.0) < 1.0:
        out.append(TypicalLogitsWarper(kwargs["typical_p"]))
    return out


def readable_token(text: str) -> str:
    """A token's text made visible on a chart: spaces as ␣, newlines as ⏎, tabs as ⇥."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


def next_token_distribution(model, tokenizer, prompt, sampler: str = "greedy", params: dict | None = None,
                            top: int = 15, prefix: str = "", system: str | None = None, registry=None) -> dict:
    """One step of generation, seen from inside: what the model would say next, before and after the sampler.

    Runs one forward pass on the templated prompt (plus ``prefix``, a partial answer)
    and returns, for the ``top`` most likely tokens of the raw softmax::

        {"tokens": [readable str], "ids": [int], "before": [prob], "after": [prob],
         "other_before": prob, "other_after": prob, "kept": int, "greedy": bool}

    ``after`` is the distribution the sampler actually draws from (renormalised; 0 for
    tokens it cut). Greedy and beam search do not draw: greedy's ``after`` is all on
    the single most likely token; beam's is the plain distribution (beam search looks
    at several candidates, see its help). ``other_*`` is the mass outside the shown
    tokens, ``kept`` how many tokens of the whole vocabulary can still be picked.
    """
    import torch

    kwargs, extra = sampler_settings(sampler, params, registry)
    checked_settings(sampler, kwargs, registry)
    input_ids = build_prompt(tokenizer, prompt, system)
    if prefix:
        prefix_ids = tokenizer(prefix, add_special_tokens=False, return_tensors="pt")["input_ids"]
        input_ids = torch.cat([input_ids, prefix_ids], dim=1)
    input_ids = input_ids.to(_device(model))
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits[:, -1, :].float()
        before = logits.softmax(-1)[0]
        scores = logits
        for processor in sampling_processors(kwargs, extra):
            scores = processor(input_ids, scores)
        greedy = not kwargs.get("do_sample") and kwargs.get("num_beams", 1) == 1
        if greedy:
            after = torch.zeros_like(before)
            after[scores[0].argmax()] = 1.0
        else:
            after = scores.softmax(-1)[0]  # -inf (cut) tokens get exactly 0
    top_probs, top_ids = before.topk(min(top, before.numel()))
    ids = top_ids.tolist()
    return {
        "tokens": [readable_token(tokenizer.decode([i])) for i in ids],
        "ids": ids,
        "before": top_probs.tolist(),
        "after": after[top_ids].tolist(),
        "other_before": max(0.0, 1.0 - top_probs.sum().item()),
        "other_after": max(0.0, 1.0 - after[top_ids].sum().item()),
        "kept": int((after > 0).sum().item()),
        "greedy": greedy,
    }


def _device(model) -> torch.device:
    return next(model.parameters()).device
