"""Export: a run's ``final/`` as one GGUF file plus an Ollama Modelfile, checked by reading it back.

GGUF is the single-file format llama.cpp, Ollama and LM Studio run: the weights,
the architecture's numbers and the tokenizer (vocabulary, merges, special tokens,
chat template) in one file. ``export_run`` writes, into an output folder:

- ``<run-name>.gguf`` in ``f16`` (16-bit floats, no quality lost in practice) or
  ``q8_0`` (8-bit blocks of 32 weights sharing one scale: about half the size);
- ``Modelfile``: what ``ollama create NAME -f Modelfile`` reads (the GGUF, the chat
  template in Ollama's Go template language, the stop token, the sampler);
- ``README.md``: a model card (base model, method, data, the run's eval scores);
- for LoRA runs, ``<run-name>-lora-adapter.zip`` (the adapter alone, for peft users).

LoRA runs are merged into their base first (peft ``merge_and_unload``): GGUF
runners want one set of weights. The export checks itself: it reloads the GGUF
with transformers' GGUF loader and scores a fixed conversation with it and with
``final/``; when the read-back's perplexity exceeds final/'s by more than the type may
cost (``PERPLEXITY_BOUNDS``) it fails and leaves nothing under the final name. Supported: the architectures in
``ARCHITECTURES`` with a byte-level BPE tokenizer (SmolLM, SmolLM2, Qwen2/2.5).

No Streamlit here; the CLI's ``export`` and the dashboard call :func:`export_run`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

from .errors import UserError
from . import models, runs
from .evaluate import load_report
from .generate import sampler_settings
from .machine import fmt_bytes
from .runs import pid_alive

TYPES = ("f16", "q8_0")
# How much the read-back's perplexity may exceed final/'s on the check text, by type. Honest rounding costs
# little: f16 keeps 11 significant bits of each weight (llama.cpp's tables show +0.00% perplexity on 7B
# models), q8_0 about 8 (+0.01% to +0.1% on 7B models, more on small ones, whose weights have wider
# ranges per block). A broken export (a q/k row order slip, a wrong tokenizer, a scrambled tensor) costs
# tens of percent or more. Top-1 agreement is reported, not gated: at near-ties a tiny rounding flips the
# argmax, so on a lightly trained model it says more about the model's confidence than about the file.
PERPLEXITY_BOUNDS = {"f16": 0.005, "q8_0": 0.03}
# And how far its logits may move, as the RMS change over the RMS spread of final/'s logits. Perplexity alone
# misses a broken file when final/ is barely trained (near-uniform predictions stay near-uniform however
# scrambled); this ratio does not depend on how trained the model is. Measured on tiny models: f16 0.03%,
# q8_0 about 1%; without llama.cpp's q/k row order 110%.
LOGIT_ERROR_BOUNDS = {"f16": 0.02, "q8_0": 0.10}
# transformers class -> (GGUF architecture, whether llama.cpp permutes q/k for its rotary layout)
ARCHITECTURES = {"LlamaForCausalLM": ("llama", True), "Qwen2ForCausalLM": ("qwen2", False)}
SUPPORTED_TEXT = ("Llama-architecture models (LlamaForCausalLM: SmolLM, SmolLM2) and Qwen2 models "
                  "(Qwen2ForCausalLM: Qwen2, Qwen2.5), with a byte-level BPE tokenizer")

# The fixed conversation the read-back is scored on: every position of it, special tokens included.
VERIFY_MESSAGES = [
    {"role": "system", "content": "You are a patient science tutor. Answer in short, clear steps."},
    {"role": "user", "content": "Why does ice float on water?"},
    {"role": "assistant", "content": "Water expands when it freezes: its molecules lock into an open "
                                     "hexagonal lattice held by hydrogen bonds. So ice is about 9% less "
                                     "dense than liquid water, and anything less dense than the liquid "
                                     "around it floats."},
    {"role": "user", "content": "What would happen to lakes in winter if ice sank? Give one example."},
]


class ExportCheckFailed(RuntimeError):
    """The written GGUF does not read back as the same model (not the user's mistake).

    ``check`` holds the figures (:func:`verify`'s result, with ``failure``), so a page can offer the
    next step with them: another type, or ``keep_anyway``.
    """

    def __init__(self, message: str, check: dict | None = None):
        super().__init__(message)
        self.check = check or {}


def export_run(run_dir, out_dir, type: str = "f16", sampler: dict | None = None, progress=None,
               keep_anyway: bool = False) -> dict:
    """Export a finished run to ``out_dir/<run-name>.gguf`` + ``Modelfile`` + ``README.md``, and verify it.

    ``type``: ``"f16"`` or ``"q8_0"``. ``sampler``: ``{"name": ..., "params": {...}}`` (the
    Generate page's last choice) written into the Modelfile as Ollama PARAMETERs, or None
    for Ollama's defaults. ``progress(fraction, message)`` is called as the work goes on, through
    the read-back too. Returns plain data: ``paths``, ``sizes`` (bytes), ``seconds``, ``verification``
    (``passed``, ``perplexity_increase``, ``bound``, ``logit_error``, ``top1_agreement``, ``positions``,
    ``tokens_match``, ``prompt``, and ``failure`` when it failed), ``kept_anyway``, ...
    Raises ``UserError`` for bad input (before any heavy work) and :class:`ExportCheckFailed` when the
    read-back disagrees, keeping nothing, unless ``keep_anyway``: then the file is kept all the same and
    the result (``kept_anyway``, ``verification.failure``) and the README card say that the check failed,
    and by how much.
    """
    started = time.time()
    report = progress or (lambda fraction, message: None)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if type not in TYPES:
        raise UserError(f"--type {type}: choose one of {', '.join(TYPES)} (f16 = full quality, "
                        "q8_0 = about half the size)")
    status, cfg = _check_run(run_dir)
    settings = _sampler_settings(sampler)
    config, adapter = _final_config(run_dir / "final")
    arch, permute_qk = _check_architecture(config)
    name = _model_name(run_dir)
    estimate = _estimate_bytes(config, type)
    _check_out_dir(out_dir, estimate)

    report(0.02, "loading final/")
    model, tokenizer = _load_merged(run_dir / "final")
    vocab = _tokenizer_metadata(tokenizer, config.vocab_size)
    final = out_dir / f"{name}.gguf"
    _remove_stale_partials(out_dir, name)
    partial = out_dir / f".{name}.{os.getpid()}.partial.gguf"  # ends in .gguf: the loader insists
    try:
        t = time.time()
        _write_gguf(partial, model, config, arch, permute_qk, vocab, type, name,
                    lambda f, m: report(0.1 + 0.5 * f, m))
        write_s = time.time() - t
        t = time.time()
        check = verify(partial, model, tokenizer, type, progress=lambda f, m: report(0.62 + 0.32 * f, m))
        check["seconds"] = round(time.time() - t, 2)
        if not check["passed"]:
            check["failure"] = _check_failure(type, check, keep_anyway)
            if not keep_anyway:
                raise ExportCheckFailed(check["failure"], check)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    del model
    report(0.95, "writing Modelfile and README.md")
    modelfile = out_dir / "Modelfile"
    template = ollama_template(tokenizer)
    _write_text(modelfile, modelfile_text(name, template, settings, sampler))
    paths = {"gguf": str(final), "modelfile": str(modelfile)}
    if adapter:
        paths["lora_adapter_zip"] = str(_zip_adapter(run_dir / "final", out_dir / f"{name}-lora-adapter.zip"))
    result = {
        "name": name, "run_dir": str(run_dir), "type": type, "architecture": arch,
        "method": cfg.method, "merged_lora": adapter, "paths": paths,
        "sizes": {k: Path(p).stat().st_size for k, p in paths.items()}, "estimated_bytes": estimate,
        "seconds": {"write": round(write_s, 2), "verify": check["seconds"]},
        "verification": check, "kept_anyway": not check["passed"], "template": template["kind"],
        "commands": {"ollama": f"ollama create {name} -f Modelfile && ollama run {name}",
                     "llama_cpp": f"llama-cli -m {name}.gguf -cnv"},
    }
    card = out_dir / "README.md"
    _write_text(card, model_card(result, cfg, status, run_dir))
    paths["card"] = str(card)
    result["sizes"]["card"] = card.stat().st_size
    result["seconds"]["total"] = round(time.time() - started, 2)
    report(1.0, "done")
    return result


def _check_failure(qtype: str, check: dict, kept: bool = False) -> str:
    reasons = []
    if check["perplexity_increase"] > check["bound"]:
        reasons.append(f"its perplexity on the check text is {check['perplexity_increase']:+.2%} against final/'s "
                       f"({check['perplexity']:.3f} against {check['reference_perplexity']:.3f}), more than the "
                       f"{check['bound']:.1%} {qtype} may cost; top-1 agreement {check['top1_agreement']:.1%} over "
                       f"{check['positions']} positions")
    if check["logit_error"] > check["logit_error_bound"]:
        reasons.append(f"its next-token scores moved {check['logit_error']:.1%} of their spread, more than the "
                       f"{check['logit_error_bound']:.0%} {qtype} rounding may move them (a tensor layout slip, or "
                       "weights whose rounding blocks mix very large and very small values)")
    if not check["tokens_match"]:
        reasons.append("its tokenizer splits the check conversation into other tokens than final/'s")
    head = f"the {qtype} GGUF does not read back as the same model: {'; '.join(reasons)}"
    if kept:
        return head + "; kept anyway, as asked"
    instead = "export f16 instead, or " if qtype != "f16" else ""
    return head + f"; nothing was kept ({instead}keep the {qtype} file anyway with --keep-anyway)"


def _remove_stale_partials(out_dir: Path, name: str) -> None:
    """Drop partial files an export killed mid-write left behind (their process is gone)."""
    for stale in out_dir.glob(f".{name}.*.partial.gguf"):
        pid = stale.name[len(name) + 2: -len(".partial.gguf")]
        if pid.isdigit() and not pid_alive(int(pid)):
            stale.unlink(missing_ok=True)


# -- checks before any heavy work -------------------------------------------------------------

def _check_run(run_dir: Path):
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; list runs with `ls {runs.runs_root()}`")
    status = runs.read_status(run_dir)
    if status.get("state") != "finished":
        hint = (f"resume it with `python -m tunelab resume {run_dir}`" if status.get("state") in ("stopped", "failed")
                else "wait for it to finish")
        raise UserError(f"run {run_dir.name} is {status.get('state')}, not finished: only a finished run "
                        f"has a final model to export; {hint}")
    if not (run_dir / "final").is_dir():
        raise UserError(f"run {run_dir.name} is finished but has no final/ folder: it was moved or deleted; "
                        "train the run again to export it")
    return status, runs.run_config(run_dir)


def _sampler_settings(sampler: dict | None):
    """The sampler's generation kwargs (validated: an unknown name or bad value fails here)."""
    if not sampler:
        return None
    if not isinstance(sampler, dict) or not sampler.get("name"):
        raise UserError('sampler: expected {"name": ..., "params": {...}}, e.g. {"name": "top_p", "params": '
                        '{"top_p": 0.9}}')
    kwargs, extra = sampler_settings(sampler["name"], sampler.get("params") or {})
    return {"kwargs": kwargs, "extra_processors": bool(extra)}


def _final_config(final: Path):
    """``(model config, is_lora)`` read without loading weights (a LoRA adapter: its base's config)."""
    from transformers import AutoConfig

    where = models.resolve(str(final))
    base = models._adapter_base(where)  # the base a LoRA adapter was trained on, portable across machines
    try:
        return AutoConfig.from_pretrained(base or where), base is not None
    except (OSError, ValueError) as exc:
        raise UserError(f"{final}: cannot read the model's config ({exc})") from None


def _check_architecture(config):
    by_type = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}  # a config saved without architectures
    arch = (getattr(config, "architectures", None) or [by_type.get(config.model_type, type(config).__name__)])[0]
    if arch not in ARCHITECTURES:
        raise UserError(f"this run's model is {arch} ({config.model_type}); GGUF export supports {SUPPORTED_TEXT}. "
                        "Fine-tune one of those (the embedded SmolLM2 is one) to export it")
    if config.model_type == "llama" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        raise UserError(f"this {arch} has bias terms in its attention or MLP layers, which the GGUF "
                        "readers TuneLab checks against do not load; export supports bias-free Llama models")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise UserError(f"this {arch} uses '{rope.get('rope_type', rope.get('type'))}' RoPE scaling, which "
                        "this export does not write yet; models with plain RoPE (SmolLM2, Qwen2.5) work")
    return ARCHITECTURES[arch]


def _model_name(run_dir: Path) -> str:
    """The file and Ollama model name: the run id, in the characters Ollama accepts."""
    import re

    return re.sub(r"[^a-z0-9._-]+", "-", run_dir.resolve().name.lower()).strip("-.") or "tunelab-model"


def _estimate_bytes(config, qtype: str) -> int:
    """The GGUF's size from the architecture alone (a model on the meta device: no weights read)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    total = 0
    for name, tensor in meta.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        total += tensor.numel() * _bytes_per_weight(tensor.shape, qtype)
    vocab = getattr(config, "vocab_size", 0) or 0
    return int(total + 36 * vocab + (1 << 16))  # tokens, types and merges: ~36 bytes a token (measured)


def _bytes_per_weight(shape, qtype: str) -> float:
    if len(shape) < 2:
        return 4.0  # norms stay float32, as llama.cpp writes them
    if qtype == "q8_0" and shape[-1] % 32 == 0:
        return 34 / 32  # a block: 32 int8 values and one float16 scale
    return 2.0


def _check_out_dir(out_dir: Path, needed: int) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; pass a folder (it is created if missing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--out {out_dir} is not writable ({exc.strerror or exc}); pick a folder you can "
                        "write to") from None
    free = shutil.disk_usage(out_dir).free
    if free < needed * 1.05:
        raise UserError(f"not enough free disk for the export in {out_dir}: the GGUF needs about "
                        f"{fmt_bytes(needed)}, {fmt_bytes(free)} is free; free some space or pass --out "
                        "on another disk")


# -- loading, tokenizer and tensors ----------------------------------------------------------

def _load_merged(final: Path):
    """``(model, tokenizer)`` of final/ in float32 on the CPU, a LoRA adapter merged into its base."""
    with _no_progress_bars():
        model, tokenizer = models.load_model(str(final))
    if hasattr(model, "merge_and_unload"):  # a peft model: fold B @ A * scale into the base weights
        model = model.merge_and_unload()
    return model.eval(), tokenizer


def _pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for how this tokenizer splits text before BPE."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2

    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    parts = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's split, then bytes (TuneLab's embedded SmolLM2 tokenizer)
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"  # digits one by one, then GPT-2's split (SmolLM2 from the Hub)
    if kinds == ["Split", "ByteLevel"] and parts[0].get("pattern", {}).get("Regex") == QWEN2:
        return "qwen2"
    raise UserError(f"the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) is not one this export can "
                    f"name for llama.cpp; GGUF export supports {SUPPORTED_TEXT}")


def _tokenizer_metadata(tokenizer, vocab_size: int) -> dict:
    """Everything ``tokenizer.ggml.*`` needs: tokens, their types, merges, special ids, template."""
    from gguf import TokenType

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError(f"the tokenizer is {model.get('type')}{' with byte fallback' if model.get('byte_fallback') else ''}"
                        f" (sentencepiece style); GGUF export supports {SUPPORTED_TEXT}")
    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size:
        raise UserError(f"the tokenizer has {len(vocab)} tokens but the model embeds only {vocab_size}")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # the embedding matrix is padded past the vocabulary: llama.cpp's filler
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        types.append(TokenType.CONTROL if i in added and added[i].special
                     else TokenType.USER_DEFINED if i in added else TokenType.NORMAL)
    # merges as "a b" strings; a space inside a part is written as U+0120, as llama.cpp's converter does
    merges = [m if isinstance(m, str) else " ".join(p.replace(" ", "\u0120") for p in m) for m in model.get("merges", [])]
    probe = tokenizer("a").input_ids
    bare = tokenizer("a", add_special_tokens=False).input_ids
    return {
        "pre": _pre_tokenizer_name(tokenizer), "tokens": tokens, "types": types, "merges": merges,
        "ids": {k: getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "unk", "pad")},
        "add_bos": len(probe) > len(bare) and probe[0] == tokenizer.bos_token_id,
        "add_eos": len(probe) > len(bare) and probe[-1] == tokenizer.eos_token_id,
        "chat_template": tokenizer.chat_template,
    }


def _gguf_tensors(model, config, arch: str, permute_qk: bool):
    """``(gguf name, float32 numpy array)`` for every weight, in llama.cpp's names and layout."""
    import gguf
    import torch

    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch),
                                     config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: llama.cpp reuses token_embd (and the reader re-ties them)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"weight {hf_name} has no GGUF name for {arch}; GGUF export supports {SUPPORTED_TEXT}")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if permute_qk and name.endswith((".attn_q.weight", ".attn_k.weight")):
            # llama.cpp stores q/k rows interleaved for its rotary kernel; the readers undo this
            data = _permute(data, heads, heads if ".attn_q." in name else kv_heads)
        yield name, data


def _permute(weights, n_head: int, n_head_kv: int):
    """llama.cpp's ``LlamaModel.permute``: each head's rows from [first half, second half] to pairs."""
    n = n_head_kv
    return (weights.reshape(n, 2, weights.shape[0] // n // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _write_gguf(path: Path, model, config, arch: str, permute_qk: bool, vocab: dict, qtype: str, name: str,
                progress) -> None:
    """Write the header (architecture numbers, tokenizer) and every tensor in ``qtype``."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_description("Fine-tuned with TuneLab")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if qtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, vocab)
    tensors = list(_gguf_tensors(model, config, arch, permute_qk))
    for i, (tensor_name, data) in enumerate(tensors):
        if data.ndim < 2:
            writer.add_tensor(tensor_name, data.astype(np.float32))
        elif qtype == "q8_0" and data.shape[-1] % 32 == 0:
            writer.add_tensor(tensor_name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:  # f16, or a row too short for q8_0's 32-weight blocks
            writer.add_tensor(tensor_name, data.astype(np.float16))
        progress(0.9 * (i + 1) / len(tensors), f"converting {tensor_name}")
    del tensors
    progress(0.92, "writing the file")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    progress(1.0, "written")


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def _add_tokenizer(writer, vocab: dict) -> None:
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for kind, token_id in vocab["ids"].items():
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(vocab["add_bos"])
    writer.add_add_eos_token(vocab["add_eos"])
    if vocab["chat_template"]:
        writer.add_chat_template(vocab["chat_template"])


# -- reading back -----------------------------------------------------------------------------

def verify(gguf_path, model, tokenizer, qtype: str, progress=None) -> dict:
    """Reload ``gguf_path`` with transformers' GGUF loader and compare it with ``model`` on a fixed conversation.

    Gated: ``perplexity_increase`` (the read-back's perplexity on the conversation over ``model``'s,
    minus 1) within ``PERPLEXITY_BOUNDS[qtype]``, ``logit_error`` (RMS logit change over the RMS spread
    of ``model``'s logits) within ``LOGIT_ERROR_BOUNDS[qtype]``, and ``tokens_match`` (the GGUF's
    tokenizer splits the text into the same ids). Reported: ``top1_agreement`` over all ``positions``, ``decided_agreement``
    over the positions whose top-2 logit margin exceeds twice the largest logit change (where no
    rounding of that size could flip the argmax), and ``max_logit_diff``. ``progress(fraction, message)``
    hears each stage and each tensor read back.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = progress or (lambda fraction, message: None)
    gguf_path = Path(gguf_path)
    text = tokenizer.apply_chat_template(VERIFY_MESSAGES, tokenize=False, add_generation_prompt=True)
    with _no_progress_bars(), _read_back_hooks(report):
        report(0.0, "reading the GGUF back: its header and tokenizer")
        loaded_tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        report(0.3, "reading the GGUF back: the model's settings")
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                      dtype=torch.float32).eval()
    report(0.9, "scoring the check conversation with final/ and with the GGUF")
    ids = tokenizer(text).input_ids
    tokens_match = loaded_tok(text).input_ids == ids
    with torch.no_grad():
        x = torch.tensor([ids])
        want, got = model(input_ids=x).logits[0].float(), loaded(input_ids=x).logits[0].float()
    targets = x[0, 1:]
    nll = [float(torch.nn.functional.cross_entropy(logits[:-1], targets)) for logits in (want, got)]
    diff = float((want - got).abs().max())
    top2 = want.topk(2, dim=-1).values
    decided = (top2[:, 0] - top2[:, 1]) > 2 * diff
    same = want.argmax(-1) == got.argmax(-1)
    increase = math.exp(nll[1] - nll[0]) - 1
    centred = want - want.mean(-1, keepdim=True)
    logit_error = float((want - got).pow(2).mean().sqrt() / centred.pow(2).mean().sqrt().clamp_min(1e-12))
    return {
        "perplexity": math.exp(nll[1]), "reference_perplexity": math.exp(nll[0]),
        "perplexity_increase": increase, "bound": PERPLEXITY_BOUNDS[qtype],
        "logit_error": logit_error, "logit_error_bound": LOGIT_ERROR_BOUNDS[qtype],
        "top1_agreement": float(same.float().mean()), "positions": len(ids),
        "decided_agreement": float(same[decided].float().mean()) if bool(decided.any()) else None,
        "decided_positions": int(decided.sum()),
        "tokens_match": tokens_match, "max_logit_diff": diff,
        "passed": tokens_match and increase <= PERPLEXITY_BOUNDS[qtype] and logit_error <= LOGIT_ERROR_BOUNDS[qtype],
        "prompt": text,
    }


_READ_BACK = threading.Lock()  # the hooks below are module attributes: one read-back at a time sets them


@contextlib.contextmanager
def _read_back_hooks(report):
    """While this thread reads a GGUF back with transformers' loader: report each tensor as it is read,
    parse the file's header once instead of three times (tokenizer, config, weights: about 6 s each for
    SmolLM2's 49k tokens), and build gguf's tensor-name table once instead of once per module (about 10 s).
    The loader and the check are unchanged; only waiting goes. Other threads see the libraries as they are."""
    import gguf
    from transformers import modeling_gguf_pytorch_utils as loader

    owner, readers = threading.get_ident(), {}
    original_reader, original_names, original_tqdm = gguf.GGUFReader, gguf.get_tensor_name_map, loader.tqdm
    names = functools.lru_cache(maxsize=None)(original_names)

    def reader(path, *args, **kwargs):
        if threading.get_ident() != owner or args or kwargs:
            return original_reader(path, *args, **kwargs)
        key = str(Path(path).resolve())
        if key not in readers:
            readers[key] = original_reader(path)
        return readers[key]

    def name_map(*args, **kwargs):
        return (names if threading.get_ident() == owner else original_names)(*args, **kwargs)

    def tensors(iterable=None, *args, **kwargs):
        if threading.get_ident() != owner or iterable is None:
            return original_tqdm(iterable, *args, **kwargs)
        return _counted(list(iterable), report)

    with _READ_BACK:
        gguf.GGUFReader, gguf.get_tensor_name_map, loader.tqdm = reader, name_map, tensors
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map, loader.tqdm = original_reader, original_names, original_tqdm
            readers.clear()


def _counted(items: list, report):
    """``items`` one by one, telling ``report`` how far the weights are (0.35 to 0.85 of the read-back)."""
    for i, item in enumerate(items, 1):
        yield item
        report(0.35 + 0.5 * i / len(items), f"reading the weights back: tensor {i} of {len(items)}")


@contextlib.contextmanager
def _no_progress_bars():
    """Silence the loaders' progress bars: the export reports its own progress (the CLI: one line)."""
    import io

    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the GGUF reader's own tqdm bar
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# -- Modelfile, template, card -----------------------------------------------------------------

CHATML_GO_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if and (eq .Role "assistant") $last }}<|im_start|>assistant
{{ .Content }}
{{- else }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""


def ollama_template(tokenizer) -> dict:
    """The Modelfile's TEMPLATE (and SYSTEM) for this tokenizer's chat template.

    ChatML (SmolLM2, Qwen, TuneLab's fallback) is recognised by rendering: the Jinja
    template must give exactly ChatML's text for a probe conversation, with or without
    a default system prompt (SmolLM2 adds one when a chat has none: Ollama's SYSTEM).
    ``kind`` is "chatml"; anything else is "gguf" (no TEMPLATE: Ollama then reads the
    template stored in the GGUF).
    """
    probe = [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
             {"role": "user", "content": "U2"}]
    try:
        bare = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        with_system = tokenizer.apply_chat_template([{"role": "system", "content": "S"}] + probe, tokenize=False,
                                                    add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that cannot render the probe is simply not ChatML
        return {"kind": "gguf", "template": None, "system": None}
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in probe) + "<|im_start|>assistant\n"
    if with_system != "<|im_start|>system\nS<|im_end|>\n" + turns or not bare.endswith(turns):
        return {"kind": "gguf", "template": None, "system": None}
    head = bare[: len(bare) - len(turns)]
    if not head:
        return {"kind": "chatml", "template": CHATML_GO_TEMPLATE, "system": None}
    if head.startswith("<|im_start|>system\n") and head.endswith("<|im_end|>\n"):
        return {"kind": "chatml", "template": CHATML_GO_TEMPLATE,
                "system": head[len("<|im_start|>system\n"): -len("<|im_end|>\n")]}
    return {"kind": "gguf", "template": None, "system": None}


def ollama_parameters(settings: dict | None, sampler: dict | None) -> tuple[list[str], list[str]]:
    """``(PARAMETER lines, comment lines)`` for the sampler's generation kwargs, where Ollama has them.

    Greedy becomes temperature 0 (Ollama then always takes the likeliest token); the
    filters TuneLab leaves off are written off explicitly, since Ollama's defaults
    (top_k 40, top_p 0.9) would otherwise change what the learner picked.
    """
    if not settings:
        return [], ["no sampler given: Ollama's defaults apply (temperature 0.8, top_k 40, top_p 0.9)"]
    kw, params, notes = settings["kwargs"], [], [f"sampler: {sampler['name']} {json.dumps(sampler.get('params') or {})}"]
    if kw.get("num_beams", 1) > 1:
        notes.append("Ollama has no beam search: greedy decoding (temperature 0) is the closest it offers")
    if not kw.get("do_sample"):
        params.append(("temperature", 0))
    else:
        params += [("temperature", kw.get("temperature", 1.0)), ("top_k", kw.get("top_k", 0)),
                   ("top_p", kw.get("top_p", 1.0)), ("min_p", kw.get("min_p", 0.0))]
        if kw.get("typical_p", 1.0) != 1.0:
            params.append(("typical_p", kw["typical_p"]))
        if kw.get("temperature", 1.0) != 1.0 and (kw.get("top_p", 1.0) < 1.0 or kw.get("min_p", 0.0) > 0):
            notes.append("llama.cpp applies temperature after top_p/min_p, transformers before: close, not identical")
    if kw.get("repetition_penalty", 1.0) != 1.0:
        # transformers penalises every token of prompt and answer; -1 = the whole context in Ollama
        params += [("repeat_penalty", kw["repetition_penalty"]), ("repeat_last_n", -1)]
    if settings.get("extra_processors"):
        notes.append("this sampler also reshapes scores with its own code, which Ollama cannot run")
    return [f"PARAMETER {k} {_number(v)}" for k, v in params], notes


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{float(value):g}"


def modelfile_text(name: str, template: dict, settings: dict | None, sampler: dict | None) -> str:
    """The Modelfile: FROM the GGUF beside it, TEMPLATE, SYSTEM, stop tokens and sampler PARAMETERs."""
    lines = [f"# {name}: fine-tuned with TuneLab. Use it with:  ollama create {name} -f Modelfile",
             f"FROM ./{name}.gguf", ""]
    if template["template"]:
        lines += ["# ChatML, the same turns the model was trained on (its Jinja chat template, in Go's)",
                  f'TEMPLATE """{template["template"]}"""', ""]
        if template["system"]:
            lines += ["# the system prompt the chat template adds when a conversation has none",
                      f'SYSTEM """{template["system"]}"""', ""]
        lines += ['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|im_start|>"']
    else:
        lines += ["# not ChatML: Ollama takes the chat template stored in the GGUF (tokenizer.chat_template)"]
    params, notes = ollama_parameters(settings, sampler)
    lines += [f"# {n}" for n in notes] + params
    return "\n".join(lines) + "\n"


def model_card(result: dict, cfg, status: dict, run_dir: Path) -> str:
    """README.md beside the GGUF: what the model is, how it was made, how it scored, how to run it."""
    check = result["verification"]
    lines = [f"# {result['name']}", "",
             f"Fine-tuned with TuneLab from **{cfg.model}** ({result['architecture']} architecture).", "",
             "| | |", "|---|---|",
             f"| method | {cfg.method}{' (LoRA adapter merged into the base)' if result['merged_lora'] else ''} |",
             f"| data | `{cfg.data.path}` |",
             f"| steps | {status.get('step')} (lr {cfg.lr:g}, batch {cfg.batch_size} x {cfg.grad_accum}, "
             f"max_length {cfg.max_length}) |",
             f"| GGUF | {result['type']}, {fmt_bytes(result['sizes']['gguf'])} |",
             f"| read-back check | {'passed' if check['passed'] else '**failed, kept anyway**'}: perplexity "
             f"{check['perplexity_increase']:+.2%} against final/ on a fixed conversation (allowed: "
             f"{check['bound']:.1%}); next-token scores moved {check['logit_error']:.2%} of their spread (allowed: "
             f"{check['logit_error_bound']:.0%}); top-1 agreement {check['top1_agreement']:.1%} over "
             f"{check['positions']} positions |", ""]
    if not check["passed"]:
        lines += [f"**Warning:** this file did not pass TuneLab's read-back check and was kept at the exporter's "
                  f"request: {check.get('failure', 'see the figures above')}.", ""]
    report = load_report(run_dir)
    if report:
        data = report.get("data", {})
        lines += [f"## Scores (base -> tuned) on `{data.get('path')}`"
                  + (" (the training file: optimistic)" if data.get("training_file") else ""), ""]
        for evaluator, scores in report.get("metrics", {}).items():
            for metric, tuned in scores.get("tuned", {}).items():
                base = scores.get("base", {}).get(metric)
                if isinstance(tuned, (int, float)):
                    lines.append(f"- {evaluator} {metric}: {_fmt(base)} -> {_fmt(tuned)}")
        lines.append("")
    else:
        lines += ["Not evaluated yet (`python -m tunelab eval RUN_DIR --data HELDOUT`).", ""]
    lines += ["## Run it", "", "```", result["commands"]["ollama"], result["commands"]["llama_cpp"], "```", ""]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _zip_adapter(final: Path, target: Path) -> Path:
    """The LoRA adapter folder as one zip (for peft users), written under a temporary name first."""
    import zipfile

    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(final.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(final))
    os.replace(tmp, target)
    return target
