"""The options of ``carelab care sft`` and ``carelab care grpo``: one dataclass each, saved beside the run.

Any other field of TRL's ``SFTConfig``/``GRPOConfig`` passes through ``trl`` (checked by :func:`trl_options`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from carelab.runs import InputError

#: the folder inside a GRPO --out that holds the adapter to use (SFT + GRPO stacked when started from SFT)
FINAL_ADAPTER = "final-adapter"

@dataclass
class SFTRunConfig:
    """Everything ``carelab care sft`` needs; saved as ``sft_config.json`` beside the adapter."""

    data: list[str]
    out: str
    model: str = "smollm2-135m-instruct"
    adapter: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    epochs: float = 3.0
    max_steps: int = -1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 2048
    eval_fraction: float = 0.0
    early_stopping_patience: int | None = None
    save_steps: int = 50
    logging_steps: int = 5
    seed: int = 0
    resume: bool = False
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    dtype: str = "float32"
    gradient_checkpointing: bool = False  # saves memory on big models; costs ~30 % time on small ones
    #: pack several short traces into one row (TRL's BFD packing, padding-free): fewer padded tokens per step
    packing: bool = False
    #: any other field of TRL's ``SFTConfig`` (e.g. ``{"lr_scheduler_type": "linear"}``); checked before training
    trl: dict[str, Any] = field(default_factory=dict)


@dataclass
class GRPORunConfig:
    """Everything ``carelab care grpo`` needs; saved as ``grpo_config.json`` beside the run."""

    easy: list[str]
    out: str
    hard: list[str] = field(default_factory=list)
    model: str = "smollm2-135m-instruct"
    init_adapter: str | None = None  # SFT adapter to merge before GRPO (the paper's SFT→RL chain)
    data_format: str | None = None
    adapter: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lr: float = 1e-6
    weight_decay: float = 1e-2
    max_steps: int = 100
    batch_size: int = 5  # completions per forward/backward; batch_size × grad_accum must hold whole groups
    grad_accum: int = 1
    num_generations: int = 5
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.01  # 0 = no reference model is loaded or run (TRL's default); the paper keeps 0.01
    num_iterations: int = 1  # optimizer updates per generated batch (GRPO's μ; > 1 reuses rollouts, clipped)
    epsilon: float = 0.2
    entropy_coef: float = 1e-3
    loss_type: str = "dapo"
    max_prompt_tokens: int = 2048
    max_completion_tokens: int = 2048
    long_prompts: str = "truncate"  # truncate (middle of the context) | drop
    reward_weights: tuple[float, float, float] = (0.7, 0.1, 0.2)
    retrieval_reward: bool = True
    curriculum: bool = True
    p_max: float = 0.5
    ramp_steps: int | None = None
    accuracy_normalized: bool = False
    max_quote_share: float | None = None
    save_steps: int = 10
    logging_steps: int = 1
    seed: int = 0
    resume: bool = False
    use_vllm: bool = False
    vllm_mode: str = "colocate"  # colocate (inside each training process) | server (a `trl vllm-serve` process)
    vllm_server_url: str | None = None  # server mode: where `trl vllm-serve` listens (TRL's default: localhost:8000)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    limit: int | None = None
    #: any other field of TRL's ``GRPOConfig`` (e.g. ``{"scale_rewards": "batch"}``); checked before training
    trl: dict[str, Any] = field(default_factory=dict)
    #: score the reward on this many held-out prompts every ``heldout_steps`` steps (0 = off)
    heldout_prompts: int = 0
    heldout_steps: int = 10


def trl_options(config_cls, extra: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``base`` arguments for TRL's ``config_cls`` updated with the user's ``extra`` fields, checked by name.

    Why: every TRL option stays reachable (``trl:`` in a preset, ``--trl key=value``) without re-listing it
    here, and a typo fails before the model is loaded, not after an hour of training.
    """
    import dataclasses
    import difflib

    names = {f.name for f in dataclasses.fields(config_cls)}
    for key in extra:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InputError("trl", f"{config_cls.__name__} has no field {key!r}{hint}", field=key)
    return {**base, **extra}
