"""The TuneLab plugin contract: every hook a plugin may implement.

A plugin is any module or object with functions marked by
``pluggy.HookimplMarker("tunelab")``. It needs nothing from ``core``: the
objects it registers are plain objects (a class instance, a
``types.SimpleNamespace``) with the attributes listed below.

Param specs (``params``) are lists of dicts::

    {"name": "temperature", "type": "float", "default": 0.7,
     "min": 0.05, "max": 2.0, "help": "What it does, in plain English."}

``type`` is one of ``int``, ``float``, ``bool``, ``str``, ``choice`` (the
last needs ``choices``). The dashboard builds each plugin's form from these,
using ``help`` as the explanation, and the CLI parses ``--param k=v`` by them.

Names: every registered object's ``name`` is a lowercase letter, then up to 63
lowercase letters, digits, '_' or '-' (e.g. 'qa_jsonl'); unique per kind.

Failures: every call into a plugin's code runs under ``tunelab.core.registry.Registry.guard``.
What a function raises (beyond the bad-input errors each hook documents) is the
plugin's bug: a ``tunelab.core.registry.PluginError`` naming the plugin, the function and the
exception type, shown as one line (exit 2 on the CLI, an error box on a page) while
the rest of TuneLab carries on. ``tunelab.core.protocols`` types each kind for an IDE.
"""

from __future__ import annotations

import pluggy

PROJECT = "tunelab"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_data_formats(register):
    """Contribute data formats: call ``register(fmt)`` once per format.

    ``fmt`` has:

    - ``name`` (str): unique id (see Names above), e.g. ``"alpaca"``.
    - ``description`` (str): one sentence for the format picker.
    - ``extensions`` (list[str]): file suffixes it reads, e.g. ``[".json", ".jsonl"]``.
    - ``params`` (list[dict]): param specs for options (may be empty).
    - ``sniff(path, head) -> bool``: ``head`` is the first 64 KiB of the file
      decoded as text (longer when the first JSON record is longer, so that
      it holds one whole record); return True when the file looks like this
      format. Must be cheap and should not raise (one that does is recorded
      and passed over).
    - ``load(path, **params) -> datasets.Dataset``: canonical records (below).
      Raise ``ValueError`` with a message that names the row (1-based) and
      the field, and says how to fix it, for malformed input: that is shown as
      the user's data error. Any other exception (``KeyError``, ``TypeError``,
      ...) is the format's bug and is reported as such, naming the plugin.
    - optional ``iter_records(path, **params)``: the same reading as a stream of
      plain-dict events, one per row: ``{"row", "record", "warnings": [str]}``
      (kept), ``{"row", "dropped": reason}`` (read but not trained on) or
      ``{"row", "error": {"field", "message"}}``. ``data check`` then reads a
      big file in bounded memory and reports what was kept and dropped.

    Canonical records are one of three kinds:

    - ``{"messages": [{"role", "content"}, ...]}``: a conversation, rendered with the
      model's chat template; the assistant's replies are trained (at least one is needed).
    - ``{"text": str}``: raw text for continued pre-training; every token trained, cut
      into ``max_length`` chunks.
    - ``{"segments": [{"text": str, "label": bool}, ...]}``: raw text pieces, no chat
      template (Axolotl's ``input_output``). Each piece is tokenized on its own, without
      special tokens (write BOS/EOS into the text where they belong), and the pieces are
      joined; a piece with ``label`` true is trained, false is context only (masked with
      -100). Truncated at ``max_length``. A record with no trained text teaches nothing:
      drop it (a ``dropped`` event) rather than emit it.

    The canonical conversation, in full (only ``role`` and ``content`` are required):

    - ``role``: ``system``, ``user``, ``assistant``, or ``tool`` (a tool's result);
      ``content``: a string (content parts already joined).
    - ``train`` (assistant turns, optional): ``False`` shows the turn to the model
      as context but does not train on it (a ``loss_weight``/``weight`` of 0).
      Absent or None: trained.
    - ``tool_calls`` (assistant turns, optional): a JSON string of
      ``[{"name", "arguments"}]``.
    - record-level ``tools`` (optional): a JSON string of the tool schemas.
      Records with tool turns or tools are refused when the model's chat
      template has no tool support.
    """


@hookspec
def register_samplers(register):
    """Contribute decoding strategies: call ``register(sampler)`` once per sampler.

    ``sampler`` has:

    - ``name``, ``description`` (str) and ``params`` (list[dict]).
    - ``generation_kwargs(**params) -> dict``: keyword arguments for
      ``model.generate`` (``do_sample``, ``temperature``, ``top_k``,
      ``num_beams``, ...). A key ``model.generate`` does not take, or a value
      its warpers refuse (a temperature of 0), is reported as the plugin's fault.
    - optional ``logits_processors(**params) -> list``: extra
      ``transformers.LogitsProcessor`` objects applied during generation
      and when the lesson charts the next-token distribution. Each is called
      as ``processor(input_ids, scores)`` and must return the scores tensor;
      one that raises is reported naming the plugin, not from inside transformers.
    """


@hookspec
def register_evaluators(register):
    """Contribute evaluation metrics: call ``register(evaluator)`` once per evaluator.

    ``evaluator`` has:

    - ``name``, ``description`` (str), ``params`` (list[dict]).
    - ``higher_is_better`` (bool): how the dashboard colours a change.
    - ``evaluate(samples, context, **params) -> dict[str, float]``.
      ``samples`` is a list of dicts ``{"prompt", "reference", "answer",
      "messages"}``; ``context`` is a dict with ``model``, ``tokenizer``,
      ``max_length``, ``encode`` and ``precision`` for evaluators that need
      the model itself (such as perplexity). ``evaluate`` is called under
      that precision's ``torch.autocast`` (bf16 on a CPU with native bf16):
      cast logits with ``.float()`` before a softmax, or leave autocast with
      ``torch.autocast(device, enabled=False)`` for full fp32. Return
      aggregate metrics, keyed by metric name; a key ``"per_sample"`` may
      hold a list of per-sample scores. An evaluator that raises (or returns
      something else) is reported with its plugin's name; the others' results are kept.
    """


@hookspec
def register_backends(register):
    """Contribute a place where the work runs: call ``register(backend)`` once per backend.

    ``backend`` has:

    - ``name`` (the value of ``TUNELAB_BACKEND`` that selects it), ``description`` (str),
      ``params`` (list[dict]: the settings it reads, e.g. ``address`` and ``token``).
    - ``create(settings) -> tunelab.core.engine.Engine``: build the engine. ``settings`` is a dict
      with ``backend`` plus whatever ``TUNELAB_*`` variables or the dashboard's ``[backend]``
      secrets set (``address``, ``token``, ...). Import heavy or optional packages inside
      ``create``, not at module level: every TuneLab process loads every backend plugin.

    The returned engine implements the verbs of ``tunelab.core.engine.Engine`` (describe a model,
    check data, start/stop/resume/list runs, generate, evaluate, export) with plain data in
    and out. ``local`` and ``ray`` are built in (``plugins/backends.py``); a team adds Slurm or
    Kubernetes the same way.
    """


@hookspec
def on_train_start(run):
    """Called once when training starts (and again on resume).

    ``run`` is a dict: ``run_dir``, ``config`` (a plain dict), ``total_steps``,
    ``start_step``. Return value is ignored. A plugin raising here (or in any
    lifecycle hook) is logged on the run, in ``status.json``'s ``plugin_errors``
    (each different message once, with how often it happened; at most five per
    plugin), and training carries on.
    """


@hookspec
def on_log(run, metrics):
    """Called after each optimizer step with the metrics row just written.

    ``metrics`` is the dict appended to ``metrics.jsonl``: ``step``, ``epoch``,
    ``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``, ``elapsed_s``.
    Keep it fast: it runs inside the training loop.
    """


@hookspec
def on_evaluate(run, metrics):
    """Called after each validation pass with the row holding ``eval_loss``."""


@hookspec
def on_train_end(run, result):
    """Called once when training ends, however it ends.

    ``result`` is a dict with ``state`` (finished | stopped | failed),
    ``step``, ``error`` (or None) and ``final_dir`` (or None).
    """
