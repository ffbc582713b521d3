"""Scoring a group with its prompt encoded once equals TRL's full per-row pass: log-probs, entropies, gradients."""

from __future__ import annotations

import pytest
import torch

from carelab.care.train.shared_prefix import identical_prompt_runs, shared_prefix_logps


def test_identical_prompt_runs_groups_consecutive_rows():
    ids = torch.tensor([[1, 2, 9], [1, 2, 8], [3, 4, 7], [3, 4, 7], [1, 2, 7]])
    mask = torch.ones_like(ids)
    assert identical_prompt_runs(ids, mask, 2) == [(0, 2), (2, 4), (4, 5)]
    assert identical_prompt_runs(ids, mask, 3) == [(0, 1), (1, 2), (2, 4), (4, 5)]
    assert identical_prompt_runs(ids, mask, 2, max_rows=1) == [(i, i + 1) for i in range(5)]
    padded = mask.clone()
    padded[1, 0] = 0  # same tokens, different mask: not the same prompt
    assert identical_prompt_runs(ids, padded, 2) == [(0, 1), (1, 2), (2, 4), (4, 5)]


@pytest.fixture(scope="module")
def policy():
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from carelab.models import load_model

    torch.manual_seed(0)
    model, _ = load_model("tiny-random-qwen2")
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    return model


def _full_pass(model, input_ids, attention_mask, logits_to_keep):
    """TRL's scoring: the whole row, labels on the completion only."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :-logits_to_keep] = -100
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    return out.log_probs[:, -logits_to_keep:], out.entropy[:, -logits_to_keep:]


def _group_batch(vocab: int, pad: int):
    """Two groups of three rollouts; prompts left-padded to one length, completions right-padded."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, vocab, (n,), generator=g) for n in (13, 9)]
    rows, masks = [], []
    for prompt in prompts:
        for length in (6, 4, 2):
            completion = torch.randint(3, vocab, (length,), generator=g)
            p = torch.cat([torch.full((13 - len(prompt),), pad), prompt])
            c = torch.cat([completion, torch.full((6 - length,), pad)])
            rows.append(torch.cat([p, c]))
            masks.append(torch.cat([(torch.arange(13) >= 13 - len(prompt)).long(), (torch.arange(6) < length).long()]))
    return torch.stack(rows), torch.stack(masks)


@pytest.mark.parametrize("recompute_rows", [None, 1, 2])
def test_shared_prefix_equals_the_full_pass(policy, recompute_rows):
    """Also with the completions scored in checkpointed chunks (1 or 2 rows; a group of 3 leaves a remainder)."""
    input_ids, attention_mask = _group_batch(policy.config.vocab_size, pad=0)
    keep = 6
    completion_mask = attention_mask[:, -keep:].bool()
    params = [p for p in policy.parameters() if p.requires_grad]

    ref_logps, ref_ent = _full_pass(policy, input_ids, attention_mask, keep)
    ref_grads = torch.autograd.grad((ref_logps * completion_mask).sum() + ref_ent[completion_mask].sum(), params)
    logps, ent = shared_prefix_logps(policy, input_ids, attention_mask, keep, compute_entropy=True, max_rows=3,
                                     recompute_rows=recompute_rows)
    grads = torch.autograd.grad((logps * completion_mask).sum() + ent[completion_mask].sum(), params)

    torch.testing.assert_close(logps[completion_mask], ref_logps[completion_mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent[completion_mask], ref_ent[completion_mask], rtol=1e-5, atol=1e-5)
    assert (logps[~completion_mask] == 0).all()
    assert any(g.abs().sum() > 0 for g in ref_grads)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)



def test_repeated_layout():
    from carelab.care.train.shared_prefix import repeated_layout

    assert repeated_layout([[1, 2]] * 3 + [[3]] * 3) == 3
    assert repeated_layout([[1, 2], [1, 2], [3], [4]]) == 0
    assert repeated_layout([[1], [2]]) == 0
    assert repeated_layout([]) == 0


def test_shared_prefill_generate_matches_plain_generate(policy):
    """Greedy continuation from a once-prefilled prompt cache equals generate on the whole rows."""
    from transformers import GenerationConfig

    from carelab.care.train.shared_prefix import shared_prefill_generate

    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, policy.config.vocab_size, (n,), generator=g) for n in (11, 7)]
    ids = torch.stack([torch.cat([torch.zeros(11 - len(p), dtype=torch.long), p]) for p in prompts for _ in range(3)])
    mask = torch.stack([(torch.arange(11) >= 11 - len(p)).long() for p in prompts for _ in range(3)])
    config = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    embedded: list[int] = []
    hook = policy.get_input_embeddings().register_forward_hook(lambda m, args, out: embedded.append(args[0].numel()))
    policy.eval()
    with torch.no_grad():
        plain = policy.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        plain_tokens, embedded[:] = sum(embedded), []
        shared = shared_prefill_generate(policy, policy.generate, 3, ids, mask, generation_config=config)
    policy.train()
    hook.remove()
    assert torch.equal(plain, shared)
    # the prompts are encoded once each (2 × 10 tokens), not once per row (6 × 11)
    assert plain_tokens == 6 * 11 + 5 * 6 and sum(embedded) == 2 * 10 + 6 * 1 + 5 * 6
