"""CARE training on TRL: SFT on the pipeline's data, then GRPO with the three rewards and the curriculum.

Both stages are thin layers over TRL's ``SFTTrainer``/``GRPOTrainer`` so that ``accelerate launch`` (DDP,
FSDP, DeepSpeed ZeRO) and vLLM rollouts work unchanged on GPU nodes; on a laptop CPU the same commands
run with a small preset. The adapter switch (LoRA variants, LoRA-Pro, full) lives in ``carelab.lora.variants``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carelab.care import format as care_format
from carelab.care.heldout import heldout_callback, split_heldout, write_heldout_report
from carelab.runs import InputError, read_jsonl, save_config

#: the folder inside a GRPO --out that holds the adapter to use (SFT + GRPO stacked when started from SFT)
FINAL_ADAPTER = "final-adapter"

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- configs
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
    vllm_mode: str = "colocate"
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


# --------------------------------------------------------------------------- data
def load_sft_dataset(paths: list[str], tokenizer=None, max_length: int | None = None):
    """SFT records (with ``messages`` or ``system/prompt/output``) as a conversational prompt-completion Dataset.

    Loss is then computed on the assistant turn only (TRL's completion-only loss). Records longer than
    ``max_length`` tokens are dropped with a warning: cutting them would cut the target or its quotes.
    """
    from datasets import Dataset

    rows: list[dict[str, Any]] = []
    for path in paths:
        for lineno, obj in read_jsonl(path):
            msgs = obj.get("messages")
            if msgs is None and "output" in obj:
                msgs = [{"role": "system", "content": obj.get("system") or care_format.DEFAULT_SYSTEM_PROMPT},
                        {"role": "user", "content": obj.get("prompt") or care_format.user_content(
                            obj.get("context", ""), obj.get("question", ""))},
                        {"role": "assistant", "content": obj["output"]}]
            if not isinstance(msgs, list) or not msgs:
                raise InputError(path, "needs a 'messages' list (or 'output' with 'context'/'question')",
                                 line=lineno, field="messages")
            if msgs[-1].get("role") != "assistant" or not isinstance(msgs[-1].get("content"), str):
                raise InputError(path, "the last message must be the assistant's reply", line=lineno, field="messages")
            rows.append({"prompt": msgs[:-1], "completion": [msgs[-1]]})
    if not rows:
        raise InputError(paths[0] if paths else "<none>", "no SFT records found")
    if tokenizer is not None and max_length:
        kept = [r for r in rows if len(tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True,
                                                                     return_dict=False)) <= max_length]
        if len(kept) < len(rows):
            log.warning("dropped %d of %d SFT records longer than --max-length %d tokens",
                        len(rows) - len(kept), len(rows), max_length)
        if not kept:
            raise InputError(paths[0], f"every SFT record is longer than --max-length {max_length} tokens; raise it")
        rows = kept
    return Dataset.from_list(rows)


def grpo_rows(examples, tokenizer, level: str, max_prompt_tokens: int, long_prompts: str = "truncate",
              system_prompt: str | None = None) -> tuple[list[dict], int]:
    """GRPO prompt rows from QAExamples: conversational prompt, gold ``answer``, ``context`` and ``level``.

    ``context`` is the whole user turn, as the official retrieval reward uses. Over-long prompts are
    middle-truncated in the context (the question survives) or dropped; returns (rows, n_changed).
    """
    rows, changed = [], 0
    for ex in examples:
        context = ex.context
        try:
            context, truncated = care_format.fit_context(tokenizer, context, ex.question, max_prompt_tokens, system_prompt)
        except ValueError:
            changed += 1
            continue
        if truncated:
            changed += 1
            if long_prompts == "drop":
                continue
        msgs = care_format.build_messages(context, ex.question, system_prompt)
        rows.append({"prompt": msgs, "answer": ex.answer, "context": msgs[-1]["content"], "level": level,
                     "id": ex.id})
    return rows, changed


# --------------------------------------------------------------------------- callbacks
def _summary_callback():
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
    if _has_gpu():
        return
    from trl.trainer import utils as trl_utils

    trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = min(trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, CPU_LOGPROB_CHUNK)


def _prepare_run(config_cls, trl: dict[str, Any]) -> None:
    """What every training run does first: check the TRL options by name (a typo fails before anything is
    loaded), quiet upstream deprecation notices, bound the LM head's memory on CPU."""
    trl_options(config_cls, trl, {})
    _silence_upstream_deprecations()
    _bound_lm_head_memory()


def _quiet_progress(trainer) -> None:
    """Keep the tqdm bar but drop its printing of TRL's raw log dicts: the one-line summary says it once."""
    from transformers.trainer_callback import ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(BarOnly())


def _last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out)) if out.exists() else None


def _load_base(spec: str, init_adapter: str | None, dtype: str):
    """Load the base model; an SFT adapter is merged into the weights so GRPO's reference is the SFT model."""
    from carelab.models import load_model

    model, tok = load_model(spec, adapter=init_adapter, dtype=dtype, trainable=True)
    if init_adapter:
        model = model.merge_and_unload()
    model.train()
    return model, tok


# --------------------------------------------------------------------------- SFT
def run_sft(cfg: SFTRunConfig, callbacks: list | None = None) -> dict:
    """Supervised fine-tuning on CARE-format traces; returns the train metrics (loss before/after).

    ``callbacks`` are extra TrainerCallbacks (``benchmarks/sft_step.py`` times steps with one).
    """
    from trl import SFTConfig, SFTTrainer

    from carelab.lora.variants import make_optimizer, prepare_adapter

    _prepare_run(SFTConfig, cfg.trl)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out, "sft_config.json")
    model, tok = _load_base(cfg.model, None, cfg.dtype)
    dataset = load_sft_dataset(cfg.data, tok, cfg.max_length)
    eval_ds = None
    if cfg.eval_fraction > 0 and len(dataset) >= 10:
        split = dataset.train_test_split(test_size=cfg.eval_fraction, seed=cfg.seed)
        dataset, eval_ds = split["train"], split["test"]
    setup = prepare_adapter(cfg.adapter, model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            lr=cfg.lr, weight_decay=cfg.weight_decay,
                            train_batches=_sft_batches(dataset, tok, cfg) if cfg.adapter == "lora-ga" else None)
    model = setup.model
    args = SFTConfig(**trl_options(SFTConfig, cfg.trl, dict(
        output_dir=str(out), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio, lr_scheduler_type="cosine",
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length, completion_only_loss=True, logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed, report_to=cfg.report_to,
        eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=cfg.save_steps if eval_ds is not None else None, load_best_model_at_end=bool(
            eval_ds is not None and cfg.early_stopping_patience), metric_for_best_model="eval_loss",
        use_cpu=not _has_gpu(), dataloader_num_workers=0, disable_tqdm=False, bf16=_bf16(cfg.dtype),
        activation_checkpointing=cfg.gradient_checkpointing, packing=cfg.packing,
    )))
    callbacks = [_summary_callback(), *(callbacks or [])]
    if eval_ds is not None and cfg.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    optimizer = make_optimizer(setup, model, cfg.lr, cfg.weight_decay)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_ds, processing_class=tok,
                         callbacks=callbacks, optimizers=(optimizer, None))
    _quiet_progress(trainer)
    resume = _last_checkpoint(out) if cfg.resume else None
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out))
    tok.save_pretrained(str(out))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics = {"train_loss": result.training_loss, "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None, "steps": trainer.state.global_step,
               "n_examples": len(dataset), "adapter": cfg.adapter}
    (out / "sft_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _sft_batches(dataset, tok, cfg: SFTRunConfig):
    """A few tokenised batches for gradient-based initialisations (LoRA-GA)."""
    import torch

    for row in dataset.select(range(min(8, len(dataset)))):
        ids = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=False)
        ids = torch.tensor([ids[: cfg.max_length]])
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _bf16(dtype: str) -> bool:
    """Mixed precision only where asked for and supported (GPU bf16)."""
    return dtype == "bfloat16" and _has_gpu()


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------- GRPO
def _curriculum_trainer_class():
    """GRPOTrainer whose train sampler is the step-aware curriculum (built lazily: TRL import is heavy)."""
    from trl import GRPOTrainer

    from carelab.care.curriculum import CurriculumSampler

    class CareGRPOTrainer(GRPOTrainer):
        curriculum: dict[str, Any] = {}

        def _get_train_sampler(self, dataset=None):
            c = self.curriculum
            prompts_per_chunk = self.args.generation_batch_size // self.num_generations
            repeat = self.num_iterations * self.args.steps_per_generation
            steps_per_chunk = self.num_iterations * self.args.steps_per_generation / self.args.gradient_accumulation_steps
            num_chunks = math.ceil(self.args.max_steps / steps_per_chunk) + 1
            sampler = CurriculumSampler(
                c["n_easy"], c["n_hard"], num_generations=self.num_generations, prompts_per_chunk=prompts_per_chunk,
                repeat_count=repeat, num_chunks=num_chunks, steps_per_chunk=steps_per_chunk, p_max=c["p_max"],
                ramp_steps=c["ramp_steps"] or self.args.max_steps, seed=self.args.seed, enabled=c["enabled"],
                log_path=c.get("log_path"))
            sampler.write_log()
            return sampler

    return CareGRPOTrainer


def run_grpo(cfg: GRPORunConfig, callbacks: list | None = None, reward_wrapper=None) -> dict:
    """GRPO with accuracy/format/retrieval rewards and the easy→hard curriculum; returns reward stats.

    ``callbacks`` are extra TrainerCallbacks and ``reward_wrapper`` wraps each reward function (both used by
    ``benchmarks/grpo_step.py`` to time the parts of a step).
    """
    from datasets import Dataset
    from trl import GRPOConfig

    from carelab.care.adapters import check_init_adapter
    from carelab.care.datasets import load_examples
    from carelab.care.rewards import reward_functions
    from carelab.lora.variants import make_optimizer, prepare_adapter

    check_init_adapter(cfg)  # an SFT output GRPO cannot stack onto is refused before any training
    if (cfg.batch_size * cfg.grad_accum) % cfg.num_generations:
        raise ValueError(f"--batch-size × --grad-accum ({cfg.batch_size} × {cfg.grad_accum}) must be a multiple of the "
                         f"group size ({cfg.num_generations})")
    _prepare_run(GRPOConfig, cfg.trl)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out, "grpo_config.json")
    model, tok = _load_base(cfg.model, cfg.init_adapter, cfg.dtype)
    easy = [ex for path in cfg.easy for ex in load_examples(path, cfg.data_format, limit=cfg.limit)]
    hard = [ex for path in cfg.hard for ex in load_examples(path, cfg.data_format, limit=cfg.limit)]
    if not cfg.curriculum:
        hard = []  # the paper's no-curriculum ablation trains on the easy set only
    easy_rows, n1 = grpo_rows(easy, tok, "easy", cfg.max_prompt_tokens, cfg.long_prompts)
    hard_rows, n2 = grpo_rows(hard, tok, "hard", cfg.max_prompt_tokens, cfg.long_prompts)
    if n1 + n2:
        log.warning("%d prompts over %d tokens were %s", n1 + n2, cfg.max_prompt_tokens,
                    "middle-truncated in their context" if cfg.long_prompts == "truncate" else "dropped")
    if not easy_rows:
        raise InputError(cfg.easy[0], "no usable easy rows (all empty or too long)")
    # held-out prompts come out of both sets before training sees them, in proportion to their sizes
    n_held_hard = round(cfg.heldout_prompts * len(hard_rows) / max(1, len(easy_rows) + len(hard_rows)))
    easy_rows, held_easy = split_heldout(easy_rows, cfg.heldout_prompts - n_held_hard, cfg.seed)
    hard_rows, held_hard = split_heldout(hard_rows, n_held_hard, cfg.seed)
    dataset = Dataset.from_list(easy_rows + hard_rows)
    funcs = reward_functions(accuracy_normalized=cfg.accuracy_normalized, max_context_share=cfg.max_quote_share,
                             retrieval=cfg.retrieval_reward)
    weights = list(cfg.reward_weights[: len(funcs)])  # the ablation drops the last (retrieval) function
    extra_callbacks = list(callbacks or [])
    if held_easy or held_hard:
        # the held-out curve always uses all three rewards with the run's weights, so ablations stay comparable
        heldout_funcs = reward_functions(accuracy_normalized=cfg.accuracy_normalized,
                                         max_context_share=cfg.max_quote_share, retrieval=True)
        extra_callbacks.append(heldout_callback(held_easy + held_hard, heldout_funcs, list(cfg.reward_weights), tok,
                                                out, cfg.heldout_steps, cfg.max_completion_tokens))
    if reward_wrapper is not None:
        funcs = [reward_wrapper(f) for f in funcs]
    setup = prepare_adapter(cfg.adapter, model, r=cfg.lora_r, alpha=cfg.lora_alpha, lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    model = setup.model
    args = GRPOConfig(**trl_options(GRPOConfig, cfg.trl, dict(
        output_dir=str(out), max_steps=cfg.max_steps, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        num_generations=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p, beta=cfg.beta,
        num_iterations=cfg.num_iterations, epsilon=cfg.epsilon,
        entropy_coef=cfg.entropy_coef, loss_type=cfg.loss_type, max_completion_length=cfg.max_completion_tokens,
        reward_weights=weights, logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=2,
        seed=cfg.seed, report_to=cfg.report_to, use_cpu=not _has_gpu(),
        use_vllm=cfg.use_vllm, vllm_mode=cfg.vllm_mode, dataloader_num_workers=0, bf16=_bf16(cfg.dtype),
        activation_checkpointing=cfg.gradient_checkpointing,
        remove_unused_columns=False, log_completions=False, disable_tqdm=False,
        # dropout would make the old and new log-probs of the same tokens differ (noise in the PPO ratio)
        disable_dropout=True,
    )))
    trainer_cls = _curriculum_trainer_class()
    trainer_cls.curriculum = {"n_easy": len(easy_rows), "n_hard": len(hard_rows), "p_max": cfg.p_max,
                              "ramp_steps": cfg.ramp_steps, "enabled": cfg.curriculum and bool(hard_rows),
                              "log_path": str(out / "curriculum.jsonl")}
    optimizer = make_optimizer(setup, model, cfg.lr, cfg.weight_decay)
    trainer = trainer_cls(model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=tok,
                          callbacks=[_summary_callback(), *extra_callbacks], optimizers=(optimizer, None))
    _quiet_progress(trainer)
    resume = _last_checkpoint(out) if cfg.resume else None
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out / "grpo-adapter"))
    history = [h for h in trainer.state.log_history if "reward" in h]
    with (out / "reward_curve.jsonl").open("w") as fh:
        for h in history:
            fh.write(json.dumps({k: v for k, v in h.items() if k == "step" or k.startswith(("reward", "kl", "loss",
                                 "completions/mean_length"))}) + "\n")
    metrics = {"steps": trainer.state.global_step, "n_easy": len(easy_rows), "n_hard": len(hard_rows),
               "first_reward": history[0]["reward"] if history else None,
               "last_reward": history[-1]["reward"] if history else None}
    final = out / FINAL_ADAPTER
    if cfg.init_adapter:
        from carelab.care.adapters import stack_lora_adapters

        stack_lora_adapters(cfg.init_adapter, str(out / "grpo-adapter"), str(final))
    else:
        import shutil

        shutil.copytree(out / "grpo-adapter", final, dirs_exist_ok=True)
    metrics["final_adapter"] = str(final)
    report = write_heldout_report(out)
    if report is not None:
        metrics["heldout_report"] = str(report)
    (out / "grpo_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
