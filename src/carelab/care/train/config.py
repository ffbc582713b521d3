"""The options of ``carelab care sft`` and ``carelab care grpo``: one dataclass each, declared once.

Each field (type, default, help) is the command's flag, the preset section's key and an entry of the config
saved beside the run (:mod:`carelab.options`).

Any other field of TRL's ``SFTConfig``/``GRPOConfig`` passes through ``trl`` (checked by :func:`trl_options`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from carelab.options import option
from carelab.runs import InputError

#: the folder inside a GRPO --out that holds the adapter to use (SFT + GRPO stacked when started from SFT)
FINAL_ADAPTER = "final-adapter"
#: with --heldout-keep-adapters: the adapter (stacked like FINAL_ADAPTER) of the evaluation with the best dev reward
DEV_BEST_ADAPTER = "dev-best-adapter"

_ADAPTERS = "lora|rslora|dora|pissa|lora-ga|lora+|lora-fa|lora-pro|full"
_TRL_HELP = ("any field of TRL's {cls} as key=value (repeatable; values read as YAML), e.g. {example}; a preset "
             "sets them under `trl:`. Unknown names fail before anything is loaded")


@dataclass
class SFTRunConfig:
    """Everything ``carelab care sft`` needs; saved as ``sft_config.json`` beside the adapter.

    Each field is also the ``--flag`` of the same name and the key of a preset's ``sft:`` section.
    """

    data: list[str] = option(help="SFT JSONL file(s) from `carelab care sft-data` (repeatable)")
    out: str = option(help="output folder (adapter, checkpoints, config, TensorBoard logs)", required_flag=True)
    model: str = option("smollm2-135m-instruct", help="model spec", short="-m")
    adapter: str = option("lora", help=_ADAPTERS)
    lora_r: int = option(8, help="LoRA rank")
    lora_alpha: int = option(16, help="LoRA alpha")
    lora_dropout: float = option(0.05, help="LoRA dropout")
    epochs: float = option(3.0, help="training epochs")
    max_steps: int = option(-1, help="stop after this many optimizer steps (-1: run the epochs)")
    lr: float = option(2e-4, help="learning rate")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    warmup_ratio: float = option(0.03, help="warm-up share of the steps (cosine schedule)")
    batch_size: int = option(4, help="sequences per device per step")
    grad_accum: int = option(1, help="gradient accumulation steps")
    max_length: int = option(2048, help="longest record in tokens (longer ones are dropped with a warning)")
    eval_fraction: float = option(0.0, help="hold out this share for eval loss")
    early_stopping_patience: int | None = option(None, help="patience in evaluations (needs --eval-fraction)",
                                                 flag="--early-stopping")
    save_steps: int = option(50, help="checkpoint every N steps")
    logging_steps: int = option(5, help="log every N steps")
    seed: int = option(0, help="random seed")
    resume: bool = option(False, help="continue from the last checkpoint in --out")
    report_to: list[str] = option(help="tensorboard, wandb, … comma-separated, or none", parse="csv",
                                  factory=lambda: ["tensorboard"])
    dtype: str = option("float32", help="float32 | bfloat16 (bf16 mixed precision on GPU)")
    gradient_checkpointing: bool = option(False, help="save memory on big models; costs ~30 % time on small ones")
    packing: bool = option(False, help="pack several short traces into one row (TRL's BFD packing, padding-free)")
    completion_logits_only: bool = option(True, help="run the LM head only at the positions the loss reads (the "
                                                    "completion): exact; TRL does it on GPUs, this adds CPUs")
    causal_right_padding: bool = option(True, help="right-padded batches attend causally, without the padding mask: "
                                                  "exact (the padding follows every real token), and SDPA skips the "
                                                  "blocks above the diagonal")
    release_freed_memory: bool = option(False, help="return freed activations to the OS (glibc, CPU): peak RSS 1.9 → "
                                                   "1.5 GB in the SFT benchmark (huge pages on), at 0.84× the "
                                                   "tokens/s (page faults)")
    trl: dict[str, Any] = option(help=_TRL_HELP.format(cls="SFTConfig", example="--trl lr_scheduler_type=linear"),
                                 parse="pairs", factory=dict)


@dataclass
class GRPORunConfig:
    """Everything ``carelab care grpo`` needs; saved as ``grpo_config.json`` beside the run.

    Each field is also the ``--flag`` of the same name and the key of a preset's ``grpo:`` section.
    """

    easy: list[str] = option(help="easy-set file(s) (any supported format)")
    out: str = option(help="output folder (adapters, checkpoints, curves, config)", required_flag=True)
    hard: list[str] = option(help="hard-set file(s), mixed in by the curriculum", factory=list)
    model: str = option("smollm2-135m-instruct", help="base model spec", short="-m")
    init_adapter: str | None = option(None, help="SFT adapter folder to start from (merged: GRPO's KL reference)")
    data_format: str | None = option(None, help="input format (default: detect)", flag="--format")
    adapter: str = option("lora", help=_ADAPTERS)
    lora_r: int = option(8, help="LoRA rank")
    lora_alpha: int = option(16, help="LoRA alpha")
    lr: float = option(1e-6, help="learning rate")
    weight_decay: float = option(1e-2, help="AdamW weight decay")
    max_steps: int = option(100, help="optimizer steps")
    batch_size: int = option(5, help="completions per forward/backward; × --grad-accum must hold whole groups")
    grad_accum: int = option(1, help="batch-size × grad-accum = completions per step")
    num_generations: int = option(5, help="group size (completions per prompt)")
    temperature: float = option(1.0, help="rollout temperature (paper: 1.0)")
    top_p: float = option(1.0, help="rollout nucleus sampling")
    beta: float = option(0.01, help="KL coefficient; 0 loads and runs no reference model (the paper keeps 0.01)")
    num_iterations: int = option(1, help="updates per generated group (GRPO's μ; > 1 reuses rollouts, clipped)")
    epsilon: float = option(0.2, help="PPO clip range")
    entropy_coef: float = option(1e-3, help="entropy bonus coefficient")
    loss_type: str = option("dapo", help="TRL loss: grpo | dr_grpo | dapo | bnpo | …")
    max_prompt_tokens: int = option(2048, help="longer prompts are middle-truncated in the context or dropped")
    max_completion_tokens: int = option(2048, help="longest completion in tokens")
    long_prompts: str = option("truncate", help="truncate (middle of the context) | drop")
    reward_weights: tuple[float, float, float] = option((0.7, 0.1, 0.2), help="accuracy,format,retrieval",
                                                         parse="floats")
    retrieval_reward: bool = option(True, help="the retrieval reward (--no-retrieval-reward: the ablation)")
    retrieval_exact_only: bool = option(False, help="the retrieval reward credits exact quotes only (the official "
                                                    "rule gives a near-copy 0.5, also one with a wrong name)")
    curriculum: bool = option(True, help="easy→hard curriculum (--no-curriculum: easy set only, the ablation)")
    p_max: float = option(0.5, help="the curriculum's final share of hard prompts")
    ramp_steps: int | None = option(None, help="steps over which the hard share ramps up (default: all)")
    accuracy_normalized: bool = option(False, help="LongBench-normalised answer F1 instead of the official set F1")
    max_quote_share: float | None = option(None, help="anti-copy: a quote longer than this share of the context "
                                                      "earns nothing")
    save_steps: int = option(10, help="checkpoint every N steps")
    logging_steps: int = option(1, help="log every N steps")
    seed: int = option(0, help="random seed")
    resume: bool = option(False, help="continue from the last checkpoint in --out")
    use_vllm: bool = option(False, help="vLLM rollouts (GPU; `pip install vllm`)")
    vllm_mode: str = option("colocate", help="colocate (inside each training process) | server (a `trl vllm-serve` "
                                             "process)")
    vllm_server_url: str | None = option(None, help="server mode: where `trl vllm-serve` listens (TRL's default: "
                                                    "localhost:8000)")
    report_to: list[str] = option(help="tensorboard, wandb, … comma-separated, or none", parse="csv",
                                  factory=lambda: ["tensorboard"])
    dtype: str = option("float32", help="float32 | bfloat16 (bf16 mixed precision on GPU)")
    gradient_checkpointing: bool = option(False, help="save memory on big models")
    share_prompt: bool = option(True, help="encode each group's prompt once when scoring its completions (exact; "
                                           "needs --batch-size ≥ the group, one process, no checkpointing)")
    recompute_rows: int = option(1, help="with --share-prompt, score a group's completions this many rows at a time "
                                         "under activation checkpointing (exact; 0: all at once): peak RSS 4.2 → "
                                         "2.8 GB in the GRPO benchmark, at 0.87× the updates/hour")
    release_freed_memory: bool = option(False, help="return freed activations to the OS (glibc, CPU; generation keeps "
                                                   "the heap): peak RSS 4.2 → 3.5 GB in the GRPO benchmark, 0.8× "
                                                   "updates per CPU-hour")
    trim_heap_every_update: bool = option(False, help="hand glibc's free heap pages back to the OS after every "
                                                     "optimizer update (malloc_trim, CPU): bounds the heap a long "
                                                     "run's fragmentation keeps, one trim per update")
    limit: int | None = option(None, help="use at most N rows per file")
    trl: dict[str, Any] = option(help=_TRL_HELP.format(cls="GRPOConfig", example="--trl loss_type=dr_grpo"),
                                 parse="pairs", factory=dict)
    heldout_prompts: int = option(0, help="keep N prompts out of training; score them every --heldout-steps")
    heldout_steps: int = option(10, help="steps between held-out reward evaluations")
    heldout_keep_adapters: bool = option(False, help="save the adapter at each held-out evaluation and write the "
                                                     "best one by dev reward as dev-best-adapter")

    def __post_init__(self) -> None:
        if len(self.reward_weights) != 3:
            raise ValueError("reward_weights needs exactly three numbers: accuracy,format,retrieval")
        if self.long_prompts not in ("truncate", "drop"):
            raise ValueError("long_prompts must be 'truncate' or 'drop'")


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
