"""The plugin author's kit: pytest fixtures and contract checks for TuneLab plugins.

Use it from a plugin's tests (run with TuneLab importable, e.g. from a TuneLab checkout)::

    pytest_plugins = ["tunelab.core.testing"]

    def test_my_sampler(register_plugin, check_sampler, tiny_model_and_tokenizer):
        with register_plugin(my_plugin) as registry:        # TuneLab's built-ins + my_plugin, strict
            assert "my_sampler" in registry.items("samplers")
        model, tokenizer = tiny_model_and_tokenizer
        check_sampler(MY_SAMPLER, model, tokenizer)          # the contract, then a real generation

Fixtures:

- ``builtin_registry``: a registry with the built-in plugins only (nothing installed, no plugins folder).
- ``register_plugin``: ``with register_plugin(plugin, name=...) as registry:`` registers one plugin
  (a module or an object with ``@hookimpl`` functions) next to the built-ins, in strict mode (its
  errors raise instead of being recorded), and makes that registry the process-wide one
  (``tunelab.core.registry.get_registry()``) until the block ends.
- ``tiny_model_dir`` / ``tiny_model_and_tokenizer``: a two-layer random Llama with the embedded
  model's tokenizer, offline, built once per test session (generation takes milliseconds).
- ``check_data_format``, ``check_sampler``, ``check_evaluator``: the contract check of each kind
  (the functions of the same names below), as fixtures. ``check_data_format`` checks ``load`` and,
  when the format has it, ``iter_records`` (which data check and training read), event by event.

Nothing here imports Streamlit.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import SimpleNamespace

import pluggy
import pytest

from . import registry as _registry
from .registry import Registry, resolve_params, validate_contribution
from . import data, generate, models

hookimpl = pluggy.HookimplMarker("tunelab")

# Held-out samples as core.evaluate hands them to evaluators (``answer`` is the model's).
SAMPLES = [
    {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
     "reference": "Paris is the capital of France.", "answer": "The capital of France is Paris.",
     "messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris is the capital of France."}]},
    {"prompt": [{"role": "user", "content": "Why do plants need light?"}],
     "reference": "Plants use light energy to make sugar from water and carbon dioxide.",
     "answer": "They need it.",
     "messages": [{"role": "user", "content": "Why do plants need light?"},
                  {"role": "assistant", "content": "Plants use light energy to make sugar from water and carbon "
                                                   "dioxide."}]},
    {"prompt": [{"role": "user", "content": "Say nothing."}], "reference": "", "answer": "",
     "messages": [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}]},
]


# -- plugins for one test ---------------------------------------------------------------------

def plugin_for(kind: str, *objects):
    """A plugin object registering ``objects`` through ``register_<kind>`` (kind: data_formats, ...)."""
    if kind not in _registry.KINDS:
        raise ValueError(f"kind must be one of {', '.join(_registry.KINDS)}, got {kind!r}")

    def hook(register):
        for obj in objects:
            register(obj)

    plugin = SimpleNamespace()
    setattr(plugin, f"register_{kind}", hookimpl(hook))
    return plugin


@contextlib.contextmanager
def registered(plugin, name: str = "plugin-under-test", strict: bool = True):
    """Context manager: a registry with the built-ins and ``plugin``, installed as the process-wide one.

    ``strict`` (default) re-raises the plugin's errors (as ``TUNELAB_STRICT_PLUGINS=1``), so a
    broken plugin fails the test with its own traceback instead of being recorded and skipped.
    """
    saved_env = os.environ.get("TUNELAB_STRICT_PLUGINS")
    os.environ["TUNELAB_STRICT_PLUGINS"] = "1" if strict else "0"
    try:
        reg = Registry(load_external=False, extra_plugins=[(plugin, name)])
    finally:
        if saved_env is None:
            os.environ.pop("TUNELAB_STRICT_PLUGINS", None)
        else:
            os.environ["TUNELAB_STRICT_PLUGINS"] = saved_env
    with _registry.use_registry(reg):
        yield reg


# -- contract checks --------------------------------------------------------------------------

def check_record(record, where: str = "record") -> None:
    """Assert ``record`` is canonical: ``{"messages": [{role, content}, ...]}`` (roles system, user,
    assistant, tool; an assistant turn among them), ``{"text": str}`` or ``{"segments": [{text, label}]}``.

    The same rule the engine applies to every record a format yields (``tunelab.core.data.canonical_problem``).
    """
    problem = data.canonical_problem(record)
    assert problem is None, f"{where}: {problem}"


def check_data_format(fmt, path, sniffs: bool = True, **params):
    """The data-format contract, then ``load(path)``; returns the ``datasets.Dataset``.

    Checks the registered attributes (as the registry does), that ``sniff`` returns a bool
    without raising on ``path`` and on junk, that it recognises ``path`` (unless ``sniffs=False``),
    that ``params`` resolve against the format's specs, and that every loaded record is canonical.
    """
    from datasets import Dataset

    validate_contribution("data_formats", fmt)
    path = str(path)
    head = Path(path).read_bytes()[:64 * 1024].decode("utf-8", errors="replace")
    for junk in ("", "\x00\x01 not a data file", "{", "[1, 2"):
        result = fmt.sniff("junk.bin", junk)
        assert isinstance(result, bool), f"sniff must return True or False, got {result!r} for {junk!r}"
    said = fmt.sniff(path, head)
    assert isinstance(said, bool), f"sniff must return True or False, got {said!r}"
    if sniffs:
        assert said, f"format '{fmt.name}' does not recognise {Path(path).name} (sniff returned False)"
    values = resolve_params(fmt.params, params)
    dataset = fmt.load(path, **values)
    assert isinstance(dataset, Dataset), f"load must return a datasets.Dataset, got {type(dataset).__name__}"
    assert len(dataset) > 0, "load returned no records"
    for i, record in enumerate(dataset):
        check_record(record, f"record {i + 1}")
    if getattr(fmt, "iter_records", None) is not None:
        check_iter_records(fmt, path, len(dataset), **values)
    return dataset


def check_iter_records(fmt, path, expected: int | None = None, **params) -> list[dict]:
    """``iter_records(path)``: every event well formed (``row``, then a canonical ``record``, a
    ``dropped`` reason or an ``error`` with a ``message``), and as many records kept as ``load`` gave
    (``expected``). Returns the events."""
    events = list(fmt.iter_records(str(path), **params))
    assert events, "iter_records yielded no event"
    for event in events:
        try:
            data.checked_event(event)
        except TypeError as exc:
            raise AssertionError(f"iter_records: {exc}") from None
        assert isinstance(event["row"], int) and event["row"] >= 1, f"an event's row must be 1-based, got {event['row']!r}"
        assert all(isinstance(w, str) for w in event.get("warnings") or ()), "warnings must be strings"
        assert "dropped" not in event or isinstance(event["dropped"], str), "'dropped' must be the reason, a string"
    kept = sum("record" in e for e in events)
    if expected is not None and not any("error" in e for e in events):
        assert kept == expected, f"iter_records kept {kept} records but load returned {expected}: they must agree"
    return events


def check_sampler(sampler, model=None, tokenizer=None, max_new_tokens: int = 4, **params):
    """The sampler contract; with a model and tokenizer, also a real generation and a next-token chart.

    Returns ``(generation kwargs, answer or None)``.
    """
    validate_contribution("samplers", sampler)
    values = resolve_params(sampler.params, params)
    kwargs = sampler.generation_kwargs(**values)
    assert isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs), \
        f"generation_kwargs must return a dict of keyword arguments, got {kwargs!r}"
    extra = getattr(sampler, "logits_processors", None)
    if extra is not None:
        processors = list(extra(**values))
        assert all(callable(p) for p in processors), "logits_processors must return callables (LogitsProcessor)"
    answer = None
    if model is not None and tokenizer is not None:
        with registered(plugin_for("samplers", sampler), name=f"check-{sampler.name}") as reg:
            answer = generate.generate(model, tokenizer, "Hello!", sampler.name, values, max_new_tokens, registry=reg)
            assert isinstance(answer, str)
            dist = generate.next_token_distribution(model, tokenizer, "Hello!", sampler.name, values, top=5,
                                               registry=reg)
            assert dist["kept"] >= 1, "the sampler left no token to pick"
            assert all(0.0 <= p <= 1.0 + 1e-6 for p in dist["after"])
    return kwargs, answer


def check_evaluator(evaluator, samples=None, context=None, **params) -> dict:
    """The evaluator contract on ``samples`` (default: :data:`SAMPLES`); returns its result.

    The result must be a dict of numbers keyed by metric name, plus an optional ``per_sample``
    list with one score (a number, NaN or None) per sample.
    """
    validate_contribution("evaluators", evaluator)
    samples = SAMPLES if samples is None else samples
    context = context or {"model": None, "tokenizer": None, "max_length": 256, "encode": None, "precision": "fp32"}
    result = evaluator.evaluate([dict(s) for s in samples], context, **resolve_params(evaluator.params, params))
    assert isinstance(result, dict) and result, f"evaluate must return a non-empty dict, got {result!r}"
    for key, value in result.items():
        assert isinstance(key, str), f"metric names must be strings, got {key!r}"
        if key == "per_sample":
            assert len(value) == len(samples), f"per_sample has {len(value)} scores for {len(samples)} samples"
            assert all(v is None or isinstance(v, (int, float)) for v in value), "per_sample scores must be numbers"
        else:
            assert isinstance(value, (int, float)) and not isinstance(value, bool), \
                f"metric '{key}' must be a number, got {value!r}"
            float(value)  # NaN is allowed: it means "could not be computed"
    assert set(result) - {"per_sample"}, "evaluate returned per_sample but no aggregate metric"
    return result


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture
def builtin_registry():
    """A registry with TuneLab's built-in plugins only."""
    return Registry(load_external=False)


@pytest.fixture
def register_plugin():
    """``with register_plugin(plugin, name=..., strict=True) as registry:`` (see :func:`registered`)."""
    return registered


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A folder holding a tiny random Llama and the embedded tokenizer (offline, built once)."""
    return models.make_tiny_model(tmp_path_factory.mktemp("tunelab-tiny") / "model")


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer(tiny_model_dir):
    """``(model, tokenizer)`` loaded from :func:`tiny_model_dir`."""
    return models.load_model(tiny_model_dir)


@pytest.fixture(name="check_data_format")
def _check_data_format_fixture():
    return check_data_format


@pytest.fixture(name="check_sampler")
def _check_sampler_fixture():
    return check_sampler


@pytest.fixture(name="check_evaluator")
def _check_evaluator_fixture():
    return check_evaluator
