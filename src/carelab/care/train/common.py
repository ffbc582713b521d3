"""What SFT and GRPO runs share: loading the base, the one-line progress summary, upstream quirks handled once."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from carelab.care.train.config import trl_options


def summary_callback():
    """One line per logging step with loss and rewards (rich console)."""
    from rich.console import Console
    from transformers import TrainerCallback

    console = Console(stderr=True)

    class OneLineSummary(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or not state.is_world_process_zero:
                return
            keys = ("loss", "reward", "rewards/accuracy/mean", "rewards/format/mean", "rewards/retrieval/mean",
                    "kl", "eval_loss", "learning_rate", "completions/mean_length")
            parts = [f"{k.replace('rewards/', '').replace('/mean', '')}={logs[k]:.4g}" for k in keys if k in logs]
            if parts:
                console.print(f"[dim]step {state.global_step}/{state.max_steps}[/] " + " ".join(parts))

    return OneLineSummary()


def heap_trim_callback():
    """After every optimizer update, return glibc's free heap pages to the OS (:func:`carelab.memory.trim_heap`).

    Why: a long GRPO run's resident memory grows with its updates while the bytes in use stay flat (run 9: 2.3 GB in
    use, 4.1 GB resident after 60 updates): the freed blocks glibc keeps. One trim per update pays the page faults
    once per update, not at every allocation as ``release_freed_memory`` does.
    """
    from transformers import TrainerCallback

    from carelab.memory import trim_heap

    class TrimHeap(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            trim_heap()

    return TrimHeap()


def _silence_upstream_deprecations() -> None:
    """Upstream's own deprecation notices (PEFT and TRL still call the ``gradient_checkpointing`` names) are not
    the user's to fix."""
    import warnings

    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated", category=FutureWarning)


#: tokens per tile of TRL's fused log-prob LM head on CPU: its default (32k) materialises the logits of a
#: whole batch at once (4 × 1024 tokens × 49k vocabulary = 0.8 GB, several copies in backward)
CPU_LOGPROB_CHUNK = 1024


def _bound_lm_head_memory() -> None:
    """On CPU, tile TRL's fused LM head finely (a private constant, guarded by tests/test_upstream_contracts.py)."""
    if has_gpu():
        return
    from trl.trainer import utils as trl_utils

    trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = min(trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, CPU_LOGPROB_CHUNK)


@contextlib.contextmanager
def completion_positions_only(enabled: bool = True):
    """Inside it (when ``enabled``), TRL's fused LM head projects only the positions that have a label, on every device.

    Why: without Triton (CPU) TRL runs the 49k-vocabulary head over *every* position and masks afterwards (fixed
    tile shapes for compilers); CARE traces are mostly prompt, so most of that work has no loss. The labelled
    positions go through the same kernel, so loss and gradients equal the full pass up to float rounding. It
    flips TRL's private device check for the duration (guarded by tests/test_upstream_contracts.py).
    """
    if not enabled:
        yield
        return
    from trl.trainer import utils as trl_utils

    device_check = trl_utils._use_triton
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = device_check


#: glibc's mmap threshold (bytes) with --release-freed-memory: a freed tensor at least this big goes back to the OS
CPU_MMAP_THRESHOLD = 256 * 1024
_unmapping = False  # whether CPU_MMAP_THRESHOLD took in this process


def _set_mmap_threshold(nbytes: int) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, nbytes)`` of the C library this process runs on; False where there is none."""
    from carelab.memory import M_MMAP_THRESHOLD, set_malloc_option

    return set_malloc_option(M_MMAP_THRESHOLD, nbytes)


def release_freed_memory() -> bool:
    """On glibc (CPU runs), fix malloc's mmap threshold so freed activations are unmapped, not kept.

    Why: glibc raises the threshold to 32 MB after the first large free, so later activations are carved from
    heaps that fragment and never shrink: the SFT benchmark's peak RSS falls 4.4 → 1.5 GB with it. The price is
    a page fault per fresh page: ~40 % more CPU time per token (docs/care.md). True when the setting took.
    """
    global _unmapping
    if has_gpu():
        return False
    _unmapping = _set_mmap_threshold(CPU_MMAP_THRESHOLD)
    return _unmapping


@contextlib.contextmanager
def heap_allocations():
    """Inside it, memory comes from glibc's heap as by default, also where :func:`release_freed_memory` took.

    For generation: the KV cache is re-allocated at every token, and the page faults of a fresh mapping cost ~3×
    the copy itself (measured on this CPU); its peak is not where training's is.
    """
    if not _unmapping:
        yield
        return
    from carelab.memory import GLIBC_WARM, M_MMAP_THRESHOLD

    _set_mmap_threshold(GLIBC_WARM[M_MMAP_THRESHOLD])
    try:
        yield
    finally:
        _set_mmap_threshold(CPU_MMAP_THRESHOLD)


def prepare_run(config_cls, trl: dict[str, Any], release_memory: bool = False) -> None:
    """What every training run does first: check the TRL options by name (a typo fails before anything is
    loaded), quiet upstream deprecation notices, bound the LM head's memory on CPU (and the allocator's if asked)."""
    trl_options(config_cls, trl, {})
    _silence_upstream_deprecations()
    _bound_lm_head_memory()
    if release_memory:
        release_freed_memory()


def quiet_progress(trainer) -> None:
    """Keep the tqdm bar but drop its printing of TRL's raw log dicts: the one-line summary says it once."""
    from transformers.trainer_callback import ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(BarOnly())


def last_checkpoint(out: Path) -> str | None:
    """The newest *complete* ``checkpoint-N`` in ``out``: one whose ``trainer_state.json`` (the Trainer's last
    write) parses. A run killed while saving leaves a newer, half-written folder that resuming must skip."""
    import json

    if not out.exists():
        return None
    steps = sorted((int(m.group(1)), p) for p in out.iterdir()
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    for _, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(path)
    return None


def load_base(spec: str, init_adapter: str | None, dtype: str):
    """Load the base model; an SFT adapter is merged into the weights so GRPO's reference is the SFT model."""
    from carelab.models import load_model

    model, tok = load_model(spec, adapter=init_adapter, dtype=dtype, trainable=True)
    if init_adapter:
        model = model.merge_and_unload()
    model.train()
    return model, tok


def bf16(dtype: str) -> bool:
    """Mixed precision only where asked for and supported (GPU bf16)."""
    return dtype == "bfloat16" and has_gpu()


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
