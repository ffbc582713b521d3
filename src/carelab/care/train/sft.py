"""CARE supervised fine-tuning on TRL's ``SFTTrainer`` (completion-only loss on the pipeline's traces).

A thin layer so that ``accelerate launch`` (DDP, FSDP, DeepSpeed ZeRO) works unchanged on GPU nodes; the
adapter switch (LoRA variants, LoRA-Pro, full) lives in ``carelab.lora.variants``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from carelab import distributed
from carelab.care import format as care_format
from carelab.care.train.common import (
    bf16,
    completion_positions_only,
    has_gpu,
    last_checkpoint,
    load_base,
    prepare_run,
    quiet_progress,
    summary_callback,
)
from carelab.care.train.config import SFTRunConfig, trl_options
from carelab.onednn import onednn_linears
from carelab.runs import InputError, read_jsonl, save_config

log = logging.getLogger(__name__)


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


def run_sft(cfg: SFTRunConfig, callbacks: list | None = None) -> dict:
    """Supervised fine-tuning on CARE-format traces; returns the train metrics (loss before/after).

    ``callbacks`` are extra TrainerCallbacks (``benchmarks/sft_step.py`` times steps with one).
    """
    from trl import SFTConfig

    from carelab.lora.variants import make_optimizer, prepare_adapter

    prepare_run(SFTConfig, cfg.trl, cfg.release_freed_memory)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        save_config(cfg, out, "sft_config.json")
    model, tok = load_base(cfg.model, None, cfg.dtype)
    dataset = load_sft_dataset(cfg.data, tok, cfg.max_length)
    eval_ds = None
    if cfg.eval_fraction > 0 and len(dataset) >= 10:
        split = dataset.train_test_split(test_size=cfg.eval_fraction, seed=cfg.seed)
        dataset, eval_ds = split["train"], split["test"]
    setup = prepare_adapter(cfg.adapter, model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed,
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
        use_cpu=not has_gpu(), dataloader_num_workers=0, disable_tqdm=False, bf16=bf16(cfg.dtype),
        activation_checkpointing=cfg.gradient_checkpointing, packing=cfg.packing,
    )))
    callbacks = [summary_callback(), *(callbacks or [])]
    if eval_ds is not None and cfg.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    optimizer = make_optimizer(setup, model, cfg.lr, cfg.weight_decay)
    trainer_cls = _sft_trainer_class(cfg.completion_logits_only, cfg.causal_right_padding)
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, eval_dataset=eval_ds, processing_class=tok,
                          callbacks=callbacks, optimizers=(optimizer, None))
    quiet_progress(trainer)
    resume = last_checkpoint(out) if cfg.resume else None
    with onednn_linears(model):
        result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out))  # every process calls it (sharded models gather); the main one writes
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics = {"train_loss": result.training_loss, "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None, "steps": trainer.state.global_step,
               "n_examples": len(dataset), "adapter": cfg.adapter}
    if distributed.is_main():
        tok.save_pretrained(str(out))
        (out / "sft_metrics.json").write_text(json.dumps(metrics, indent=2))
    distributed.barrier()  # the next stage (GRPO, eval) may read the adapter on any process
    return metrics


def _sft_trainer_class(completion_logits_only: bool, causal_right_padding: bool = True):
    """TRL's SFTTrainer, with the LM head over the completion positions only and right-padded batches without their
    padding mask when asked (built lazily: TRL import is heavy)."""
    from trl import SFTTrainer

    class CareSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """TRL's loss and its entropy / token-accuracy metrics, computed where the labels are."""
            with (completion_positions_only(completion_logits_only),
                  causal_mask_for_right_padding(model, causal_right_padding)):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)

    return CareSFTTrainer


def is_right_padded(attention_mask, labels=None) -> bool:
    """Whether every row is real tokens then padding (ones then zeros), with no label on a padded position."""
    if attention_mask is None or attention_mask.dim() != 2 or not bool(attention_mask[:, 0].all()):
        return False
    if bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
        return False
    return labels is None or bool((labels[attention_mask == 0] == -100).all())


@contextlib.contextmanager
def causal_mask_for_right_padding(model, enabled: bool = True):
    """Inside it, a right-padded batch reaches ``model`` without its padding mask: attention is causal only.

    Why: with a padding mask, SDPA's CPU kernel attends over the whole square and adds the mask; causal-only, it
    skips the blocks above the diagonal (``benchmarks/sft_step.py``: 1.51× → 1.99× today's tokens/s). With right padding every real token's
    keys are the real tokens before it either way, so the outputs at real positions are the same, and the padded
    positions carry no label. Left-padded or packed batches pass unchanged.
    """
    if not enabled:
        yield
        return

    def drop_padding_mask(module, args, kwargs):
        if is_right_padded(kwargs.get("attention_mask"), kwargs.get("labels")):
            return args, {**kwargs, "attention_mask": None}
        return None

    handle = model.register_forward_pre_hook(drop_padding_mask, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _sft_batches(dataset, tok, cfg: SFTRunConfig):
    """A few tokenised batches for gradient-based initialisations (LoRA-GA)."""
    import torch

    for row in dataset.select(range(min(8, len(dataset)))):
        ids = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=False)
        ids = torch.tensor([ids[: cfg.max_length]])
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
