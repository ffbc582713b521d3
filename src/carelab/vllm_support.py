"""vLLM plumbing for the three places CARE can use it: GRPO rollouts, evaluation, serving.

Why one module: each path needs the same three things — a clear one-line refusal where vLLM is not installed
(it is a CUDA-only extra), the model folder vLLM should load for a carelab model spec, and the LoRA settings
for the CARE adapter — and each builds exactly what it would launch (TRL options, ``LLM`` arguments, the
``vllm serve`` command line) in a plain function, so tests check the plumbing without a GPU.

* ``care grpo --use-vllm``: TRL generates the rollouts with vLLM, either ``colocate`` (inside each training
  process) or ``server`` (a ``trl vllm-serve`` process started beforehand; :func:`grpo_server_command`).
* ``care eval --engine vllm``: :class:`VLLMGenerator`, greedy, each adapter as a ``LoRARequest``.
* ``carelab serve --engine vllm``: vLLM's own OpenAI server with the adapter as a LoRA module
  (:func:`serve_command`), behind the CARE quote-check proxy of :mod:`carelab.care.serve.vllm_proxy`
  (which lives with CARE, so this module imports nothing of CARE).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: GRPO rollout modes TRL offers with vLLM
VLLM_MODES = ("colocate", "server")
#: engines of ``care eval`` and ``carelab serve``
ENGINES = ("hf", "vllm")
#: the name the CARE adapter is served under by ``vllm serve --lora-modules``
LORA_NAME = "care"


class VLLMUnavailable(RuntimeError):
    """vLLM is needed for the requested path but is not installed (or cannot serve this model spec)."""


def require_vllm(what: str) -> None:
    """Refuse ``what`` in one line where vLLM is not installed (checked without importing it: it is slow)."""
    if importlib.util.find_spec("vllm") is None:
        raise VLLMUnavailable(f"{what} needs vLLM, which is not installed here; install it on a CUDA machine "
                              "(pip install vllm) or drop the vLLM option")


def model_path(spec: str) -> str:
    """The folder or hub id vLLM should load for a carelab model spec (the tiny test models have none)."""
    from carelab.models import resolve_spec

    resolved = resolve_spec(spec)
    if resolved.kind == "tiny":
        raise VLLMUnavailable(f"vLLM cannot load the test model {spec!r}; give a Hugging Face id or folder")
    return resolved.source


def adapter_rank(adapter: str | None) -> int:
    """The LoRA rank of a PEFT adapter folder (vLLM must be started with at least this ``max_lora_rank``)."""
    if not adapter:
        return 0
    config = Path(adapter) / "adapter_config.json"
    try:
        return int(json.loads(config.read_text())["r"])
    except (OSError, KeyError, ValueError, TypeError):
        raise VLLMUnavailable(f"{config}: not a LoRA adapter vLLM can load (needs adapter_config.json with 'r')") \
            from None


def lora_rank_bound(rank: int) -> int:
    """vLLM accepts only these ``max_lora_rank`` values; the smallest that holds ``rank``."""
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    raise VLLMUnavailable(f"LoRA rank {rank} is above vLLM's largest max_lora_rank (512)")


# --------------------------------------------------------------------------- GRPO
def grpo_options(mode: str, server_url: str | None = None) -> dict[str, Any]:
    """TRL ``GRPOConfig`` fields for vLLM rollouts in ``mode`` (the rest of TRL's vllm_* stay reachable via --trl)."""
    if mode not in VLLM_MODES:
        raise ValueError(f"--vllm-mode must be one of {', '.join(VLLM_MODES)}, got {mode!r}")
    options: dict[str, Any] = {"use_vllm": True, "vllm_mode": mode}
    if mode == "server" and server_url:
        options["vllm_server_base_url"] = server_url
    return options


def grpo_server_command(spec: str, tensor_parallel: int = 1, port: int = 8000) -> list[str]:
    """The ``trl vllm-serve`` command to start (on GPUs the training does not use) before ``--vllm-mode server``."""
    return ["trl", "vllm-serve", "--model", model_path(spec), "--tensor-parallel-size", str(tensor_parallel),
            "--port", str(port)]


# --------------------------------------------------------------------------- eval
def offline_engine_args(spec: str, dtype: str, seed: int, adapters: Sequence[str | None]) -> dict[str, Any]:
    """Arguments of ``vllm.LLM`` for evaluating ``spec`` with every adapter in ``adapters`` as a LoRA."""
    ranks = [adapter_rank(a) for a in adapters if a]
    args: dict[str, Any] = {"model": model_path(spec), "dtype": "auto" if dtype == "float32" else dtype,
                            "seed": seed, "enable_prefix_caching": True}
    if ranks:
        args.update(enable_lora=True, max_lora_rank=lora_rank_bound(max(ranks)), max_loras=1)
    return args


class VLLMGenerator:
    """Greedy generation from token ids with vLLM's offline engine; each adapter is one ``LoRARequest``."""

    def __init__(self, spec: str, dtype: str, seed: int, adapters: Sequence[str | None]):
        require_vllm("--engine vllm")
        from vllm import LLM

        self.llm = LLM(**offline_engine_args(spec, dtype, seed, adapters))
        self.seed = seed
        self._lora_ids: dict[str, int] = {}

    @property
    def window(self) -> int:
        """The engine's context length (prompt + completion tokens)."""
        return int(self.llm.llm_engine.model_config.max_model_len)

    def lora_request(self, adapter: str | None):
        """The request that applies ``adapter`` (``None`` for the base model); ids stay stable per folder."""
        if not adapter:
            return None
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(adapter, len(self._lora_ids) + 1)
        return LoRARequest(f"adapter-{lora_id}", lora_id, adapter)

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: int, adapter: str | None = None,
                 on_result: Callable[[int, str], None] | None = None) -> list[str]:
        """One greedy completion per prompt, in order; ``on_result(i, text)`` as in ``generation.generate_from_ids``."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, seed=self.seed, skip_special_tokens=True)
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompts], params,
                                    lora_request=self.lora_request(adapter), use_tqdm=False)
        texts = [out.outputs[0].text for out in outputs]
        if on_result is not None:
            for i, text in enumerate(texts):
                on_result(i, text)
        return texts


# --------------------------------------------------------------------------- serve
def serve_command(spec: str, adapter: str | None, host: str, port: int, name: str,
                  max_model_len: int | None = None) -> list[str]:
    """The ``vllm serve`` command: the base model, the CARE adapter as LoRA module ``care`` when given."""
    cmd = ["vllm", "serve", model_path(spec), "--host", host, "--port", str(port), "--served-model-name", name]
    if adapter:
        cmd += ["--enable-lora", "--lora-modules", f"{LORA_NAME}={adapter}",
                "--max-lora-rank", str(lora_rank_bound(adapter_rank(adapter)))]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd
