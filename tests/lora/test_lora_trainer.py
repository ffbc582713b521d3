"""LoRAProAdamW inside transformers.Trainer and TRL's SFTTrainer: loss falls, no double update."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from carelab.lora.lorapro import LoRAProAdamW
from carelab.lora.variants import make_optimizer, prepare_adapter
from carelab.models import load_model


def _ids_dataset(tok, n=16, length=20):
    gen = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        vocab = torch.randint(5, len(tok) - 1, (4,), generator=gen)
        ids = vocab[torch.arange(length) % 4].tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": ids})
    return Dataset.from_list(rows)


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_hf_trainer_with_lorapro_optimizer(tmp_path):
    from transformers import Trainer, TrainingArguments

    model, tok = load_model("tiny-random-qwen2", trainable=True)
    torch.manual_seed(0)
    setup = prepare_adapter("lora-pro", model, r=4, alpha=8, dropout=0.0, lr=3e-2)
    opt = make_optimizer(setup, setup.model, lr=3e-2, weight_decay=0.0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=4,
                             logging_steps=5, save_strategy="no", report_to=[], use_cpu=True,
                             lr_scheduler_type="constant", seed=0, disable_tqdm=True)
    steps = []
    original = opt.step

    def counting_step(*a, **k):
        steps.append(1)
        return original(*a, **k)

    opt.step = counting_step
    trainer = Trainer(model=setup.model, args=args, train_dataset=_ids_dataset(tok), optimizers=(opt, None))
    trainer.train()
    losses = _losses(trainer)
    assert len(steps) == 30  # exactly one optimizer step per training step
    assert losses[-1] < losses[0] - 0.1


@pytest.mark.parametrize("mode", ["efficient", "full"])
def test_trl_sft_trainer_with_optimizer_cls_and_kwargs(tmp_path, mode):
    from trl import SFTConfig, SFTTrainer

    model, tok = load_model("tiny-random-qwen2", trainable=True)
    torch.manual_seed(0)
    setup = prepare_adapter("lora", model, r=4, alpha=8, dropout=0.0, lr=3e-2)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=4, logging_steps=5,
                     save_strategy="no", report_to=[], use_cpu=True, lr_scheduler_type="constant",
                     learning_rate=3e-2, seed=0, disable_tqdm=True, max_length=32)
    trainer = SFTTrainer(
        model=setup.model,
        args=args,
        train_dataset=_ids_dataset(tok),
        processing_class=tok,
        optimizer_cls_and_kwargs=(LoRAProAdamW, {"model": setup.model, "lr": 3e-2, "mode": mode}),
    )
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer,
                      LoRAProAdamW)
    losses = _losses(trainer)
    assert losses[-1] < losses[0] - 0.1
