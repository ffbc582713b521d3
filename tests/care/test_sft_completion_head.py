"""SFT with the LM head run at the completion positions only equals TRL's full pass: loss, LoRA gradients, metrics.

Also right-padded batches without their padding mask (--causal-right-padding), --release-freed-memory's allocator
switch (glibc's mmap threshold) and its heap mode for generation.
"""

from __future__ import annotations

import pytest
import torch

from carelab.care.train import common
from carelab.memory import GLIBC_WARM, M_MMAP_THRESHOLD

TINY = "tiny-random-qwen2"


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig

    from carelab.care.train.sft import _sft_trainer_class
    from carelab.models import load_model

    torch.manual_seed(0)
    model, tok = load_model(TINY, trainable=True)
    # random B as well as A, so that every LoRA matrix gets a non-zero gradient
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    row = {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]}
    args = SFTConfig(output_dir=str(tmp_path_factory.mktemp("sft")), use_cpu=True, report_to=[], max_steps=1,
                     completion_only_loss=True, activation_checkpointing=False)
    return _sft_trainer_class(True)(model=model, args=args, train_dataset=Dataset.from_list([row]),
                                   processing_class=tok)


def _batch(vocab: int, pad: int, completion_rows=(0, 1)) -> dict:
    """Three right-padded rows; the rows in ``completion_rows`` have completion labels, the others none."""
    g = torch.Generator().manual_seed(3)
    lengths, prompt = (14, 10, 12), 6
    ids = torch.full((3, 14), pad)
    mask = torch.zeros(3, 14, dtype=torch.long)
    labels = torch.full((3, 14), -100)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, :n] = 1
        if i in completion_rows:
            labels[i, prompt:n] = ids[i, prompt:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_grads_metrics(trainer, compute_loss, inputs):
    trainer.model.zero_grad(set_to_none=True)
    trainer._metrics["train"].clear()
    loss = compute_loss(trainer, trainer.model, dict(inputs))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    metrics = {k: list(v) for k, v in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics


@pytest.mark.parametrize("completion_rows", [(0, 1), (0, 2), ()], ids=["all", "one-row-without", "none"])
def test_completion_head_equals_the_full_pass(trainer, completion_rows, monkeypatch):
    from trl import SFTTrainer
    from trl.trainer import utils as trl_utils

    inputs = _batch(trainer.model.config.vocab_size, trainer.processing_class.pad_token_id, completion_rows)
    full = _loss_grads_metrics(trainer, SFTTrainer.compute_loss, inputs)
    projected: list[int] = []  # positions that went through the LM head, per call
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *a: projected.append(hidden.size(0)) or apply(hidden, *a))
    ours = _loss_grads_metrics(trainer, type(trainer).compute_loss, inputs)

    assert projected == [int((inputs["labels"][:, 1:] != -100).sum())]  # only the labelled positions
    torch.testing.assert_close(ours[0], full[0], rtol=1e-5, atol=1e-6)
    assert ours[1].keys() == full[1].keys() and ours[1]
    for name, grad in full[1].items():
        torch.testing.assert_close(ours[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    if completion_rows:
        assert full[0] > 0 and any(g.abs().sum() > 0 for g in full[1].values())
    else:
        assert full[0] == 0
    for key in ("entropy", "mean_token_accuracy"):  # TRL's logging still works
        assert ours[2][key] == pytest.approx(full[2][key], rel=1e-5, abs=1e-6), key


def _layer_masks(trainer) -> list:
    """Record the attention mask the first decoder layer receives (None: causal attention only)."""
    seen: list = []
    layer = trainer.model.get_base_model().model.layers[0]
    layer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("attention_mask")), with_kwargs=True)
    return seen


def test_right_padded_batches_attend_causally_with_the_masked_loss_and_gradients(tmp_path):
    """Same loss, LoRA gradients and metrics as with the padding mask; the layers really got no mask."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig

    from carelab.care.train.sft import _sft_trainer_class
    from carelab.models import load_model

    results = {}
    for causal in (False, True):
        torch.manual_seed(0)
        model, tok = load_model(TINY, trainable=True)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False))
        row = {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]}
        args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1, completion_only_loss=True,
                         activation_checkpointing=False)
        trainer = _sft_trainer_class(True, causal)(model=model, args=args, train_dataset=Dataset.from_list([row]),
                                                  processing_class=tok)
        seen = _layer_masks(trainer)
        inputs = _batch(model.config.vocab_size, tok.pad_token_id)
        results[causal] = _loss_grads_metrics(trainer, type(trainer).compute_loss, inputs)
        assert (seen[-1] is None) == causal, causal
    (masked_loss, masked_grads, masked_metrics), (loss, grads, metrics) = results[False], results[True]
    torch.testing.assert_close(loss, masked_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == masked_grads.keys() and any(g.abs().sum() > 0 for g in grads.values())
    for name, grad in masked_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    for key in ("entropy", "mean_token_accuracy", "num_tokens"):
        assert metrics[key] == pytest.approx(masked_metrics[key], rel=1e-5, abs=1e-6), key


def test_only_right_padding_without_labels_on_it_counts_as_right_padded():
    from carelab.care.train.sft import is_right_padded

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    labels = torch.tensor([[-100, 5, 6, -100], [-100, 5, 6, 7]])
    assert is_right_padded(mask, labels) and is_right_padded(mask) and is_right_padded(torch.ones(2, 3))
    assert not is_right_padded(torch.tensor([[0, 1, 1], [1, 1, 1]]))  # left padding
    assert not is_right_padded(torch.tensor([[1, 0, 1]]))  # a hole
    assert not is_right_padded(mask, torch.tensor([[-100, 5, 6, 9], [-100, 5, 6, 7]]))  # a label on a pad
    assert not is_right_padded(None) and not is_right_padded(torch.ones(1, 1, 3, 3))


def test_a_left_padded_batch_keeps_its_mask():
    from carelab.care.train.sft import causal_mask_for_right_padding

    seen: list = []

    class Recorder(torch.nn.Module):
        def forward(self, x, attention_mask=None):
            seen.append(attention_mask)

    model = Recorder()
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with causal_mask_for_right_padding(model):
        model(torch.zeros(1), attention_mask=left)
        model(torch.zeros(1), attention_mask=torch.tensor([[1, 1, 0]]))
    model(torch.zeros(1), attention_mask=torch.tensor([[1, 1, 0]]))  # the hook is gone after the block
    assert seen[0] is left and seen[1] is None and seen[2] is not None


def test_completion_head_restores_trl_device_check():
    from trl.trainer import utils as trl_utils

    before = trl_utils._use_triton
    with common.completion_positions_only():
        assert trl_utils._use_triton(torch.device("cpu"))
    assert trl_utils._use_triton is before


def test_release_freed_memory_fixes_glibc_mmap_threshold_on_cpu(monkeypatch):
    """The setting takes on glibc Linux without a GPU (and is left alone with one)."""
    import platform

    monkeypatch.setattr(common, "_unmapping", False)
    monkeypatch.setattr(common, "has_gpu", lambda: True)
    assert not common.release_freed_memory()
    monkeypatch.setattr(common, "has_gpu", lambda: False)
    if platform.libc_ver()[0] == "glibc":
        assert common.release_freed_memory()
    common._set_mmap_threshold(GLIBC_WARM[M_MMAP_THRESHOLD])  # the rest of the test process: heap as usual


def test_generation_allocates_from_the_heap_while_training_unmaps(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(common, "_set_mmap_threshold", lambda n: calls.append(n) or True)
    monkeypatch.setattr(common, "has_gpu", lambda: False)
    monkeypatch.setattr(common, "_unmapping", False)
    with common.heap_allocations():  # nothing was set: nothing to undo
        pass
    assert calls == []
    assert common.release_freed_memory()
    with common.heap_allocations():
        assert calls == [common.CPU_MMAP_THRESHOLD, GLIBC_WARM[M_MMAP_THRESHOLD]]
    assert calls[-1] == common.CPU_MMAP_THRESHOLD
