"""CARE GRPO on TRL's ``GRPOTrainer``: the three rewards and the easy→hard curriculum sampler.

A thin layer so that ``accelerate launch`` (DDP, FSDP, DeepSpeed ZeRO) and vLLM rollouts work unchanged on GPU
nodes; on a laptop CPU the same command runs with a small preset.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

from carelab import distributed
from carelab.care import format as care_format
from carelab.care.train.common import (
    bf16,
    has_gpu,
    heap_allocations,
    heap_trim_callback,
    last_checkpoint,
    load_base,
    prepare_run,
    quiet_progress,
    summary_callback,
)
from carelab.care.train.config import DEV_BEST_ADAPTER, FINAL_ADAPTER, GRPORunConfig, trl_options
from carelab.care.train.heldout import (
    HELDOUT_ADAPTERS,
    best_heldout_step,
    heldout_callback,
    read_heldout,
    split_heldout,
    write_heldout_report,
)
from carelab.onednn import onednn_linears
from carelab.runs import InputError, save_config

log = logging.getLogger(__name__)


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


def _curriculum_trainer_class():
    """GRPOTrainer whose train sampler is the step-aware curriculum (built lazily: TRL import is heavy)."""
    from trl import GRPOTrainer

    from carelab.care.train.curriculum import CurriculumSampler
    from carelab.care.train.shared_prefix import (
        can_share,
        identical_prompt_runs,
        repeated_layout,
        shared_prefill_generate,
        shared_prefix_logps,
    )

    class CareGRPOTrainer(GRPOTrainer):
        curriculum: dict[str, Any] = {}
        share_prompt: bool = False
        recompute_rows: int = 0

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                               **extra_inputs):
            """TRL's scoring, with each group's prompt encoded once when that is exact (see shared_prefix)."""
            prompt_len = input_ids.size(1) - logits_to_keep
            if (self.share_prompt and not compute_aux_loss and prompt_len >= 2
                    and can_share(model, self.accelerator.num_processes, self.args.gradient_checkpointing,
                                  extra_inputs)):
                runs = identical_prompt_runs(input_ids, attention_mask, prompt_len, batch_size)
                if any(end - start > 1 for start, end in runs):
                    logps, entropies = shared_prefix_logps(model, input_ids, attention_mask, logits_to_keep,
                                                           compute_entropy, max_rows=batch_size,
                                                           recompute_rows=self.recompute_rows or None)
                    return logps, entropies, None
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **extra_inputs)

        def _prepare_inputs(self, generation_batch):
            """TRL's rollouts and their scoring, with memory from the heap (generation: see heap_allocations)."""
            with heap_allocations():
                return super()._prepare_inputs(generation_batch)

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
            """TRL's transformers rollouts, with each group's prompt prefilled once instead of once per rollout."""
            repeats = repeated_layout(prompt_ids)
            model = self.accelerator.unwrap_model(self.model)
            if (not self.share_prompt or repeats < 2 or self.use_vllm or self.use_transformers_continuous_batching
                    or images is not None or multimodal_fields
                    or not can_share(model, self.accelerator.num_processes, False, {})):
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, *args,
                                                     **kwargs)
            # TRL pads, samples and cuts at EOS as usual; only its call to generate goes through the shared prefill
            shadowed = model.__dict__.get("generate")  # an instance-level wrapper (e.g. a benchmark's timer) stays
            model.generate = functools.partial(shared_prefill_generate, model, model.generate, repeats)
            try:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, *args,
                                                     **kwargs)
            finally:
                if shadowed is None:
                    del model.generate
                else:
                    model.generate = shadowed

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
            if self.accelerator.is_main_process:
                sampler.write_log()
            return sampler

    return CareGRPOTrainer


def run_grpo(cfg: GRPORunConfig, callbacks: list | None = None, reward_wrapper=None) -> dict:
    """GRPO with accuracy/format/retrieval rewards and the easy→hard curriculum; returns reward stats.

    ``callbacks`` are extra TrainerCallbacks and ``reward_wrapper`` wraps each reward function (both used by
    ``benchmarks/grpo_step.py`` to time the parts of a step).
    """
    vllm_options = {}
    if cfg.use_vllm:  # checked before the heavy imports: a missing vLLM is refused at once
        from carelab.vllm_support import grpo_options, require_vllm

        vllm_options = grpo_options(cfg.vllm_mode, cfg.vllm_server_url)  # a bad mode fails before the check
        require_vllm("--use-vllm")
    from datasets import Dataset
    from trl import GRPOConfig

    from carelab.care.data.loaders import load_examples
    from carelab.care.train.adapters import check_init_adapter
    from carelab.lora.variants import make_optimizer, prepare_adapter

    check_init_adapter(cfg)  # an SFT output GRPO cannot stack onto is refused before any training
    if cfg.recompute_rows < 0:
        raise ValueError(f"--recompute-rows must be ≥ 0 (0: no recomputation), got {cfg.recompute_rows}")
    if (cfg.batch_size * cfg.grad_accum) % cfg.num_generations:
        raise ValueError(f"--batch-size × --grad-accum ({cfg.batch_size} × {cfg.grad_accum}) must be a multiple of the "
                         f"group size ({cfg.num_generations})")
    prepare_run(GRPOConfig, cfg.trl, cfg.release_freed_memory)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        save_config(cfg, out, "grpo_config.json")
    model, tok = load_base(cfg.model, cfg.init_adapter, cfg.dtype)
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
    funcs = run_reward_functions(cfg, retrieval=cfg.retrieval_reward)
    weights = list(cfg.reward_weights[: len(funcs)])  # the ablation drops the last (retrieval) function
    extra_callbacks = list(callbacks or [])
    if cfg.trim_heap_every_update:
        extra_callbacks.append(heap_trim_callback())
    if held_easy or held_hard:
        # the held-out curve always uses all three rewards with the run's weights, so ablations stay comparable
        heldout_funcs = run_reward_functions(cfg, retrieval=True)
        extra_callbacks.append(heldout_callback(held_easy + held_hard, heldout_funcs, list(cfg.reward_weights), tok,
                                                out, cfg.heldout_steps, cfg.max_completion_tokens,
                                                keep_adapters=cfg.heldout_keep_adapters))
    if reward_wrapper is not None:
        funcs = [reward_wrapper(f) for f in funcs]
    setup = prepare_adapter(cfg.adapter, model, r=cfg.lora_r, alpha=cfg.lora_alpha, lr=cfg.lr,
                            weight_decay=cfg.weight_decay, seed=cfg.seed)
    model = setup.model
    args = GRPOConfig(**trl_options(GRPOConfig, cfg.trl, dict(
        output_dir=str(out), max_steps=cfg.max_steps, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        num_generations=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p, beta=cfg.beta,
        num_iterations=cfg.num_iterations, epsilon=cfg.epsilon,
        entropy_coef=cfg.entropy_coef, loss_type=cfg.loss_type, max_completion_length=cfg.max_completion_tokens,
        reward_weights=weights, logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=2,
        seed=cfg.seed, report_to=cfg.report_to, use_cpu=not has_gpu(),
        **vllm_options, dataloader_num_workers=0, bf16=bf16(cfg.dtype),
        activation_checkpointing=cfg.gradient_checkpointing,
        remove_unused_columns=False, log_completions=False, disable_tqdm=False,
        # dropout would make the old and new log-probs of the same tokens differ (noise in the PPO ratio)
        disable_dropout=True,
    )))
    trainer_cls = _curriculum_trainer_class()
    trainer_cls.share_prompt = cfg.share_prompt
    trainer_cls.recompute_rows = cfg.recompute_rows
    trainer_cls.curriculum = {"n_easy": len(easy_rows), "n_hard": len(hard_rows), "p_max": cfg.p_max,
                              "ramp_steps": cfg.ramp_steps, "enabled": cfg.curriculum and bool(hard_rows),
                              "log_path": str(out / "curriculum.jsonl")}
    optimizer = make_optimizer(setup, model, cfg.lr, cfg.weight_decay)
    trainer = trainer_cls(model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=tok,
                          callbacks=[summary_callback(), *extra_callbacks], optimizers=(optimizer, None))
    quiet_progress(trainer)
    resume = last_checkpoint(out) if cfg.resume else None
    with onednn_linears(model):
        trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out / "grpo-adapter"))  # every process calls it; the main one writes
    history = [h for h in trainer.state.log_history if "reward" in h]
    final = out / FINAL_ADAPTER
    metrics = {"steps": trainer.state.global_step, "n_easy": len(easy_rows), "n_hard": len(hard_rows),
               "first_reward": history[0]["reward"] if history else None,
               "last_reward": history[-1]["reward"] if history else None, "final_adapter": str(final)}
    if distributed.is_main():
        _write_grpo_outputs(cfg, out, history, metrics)
    distributed.barrier()  # the next stage may read the final adapter on any process
    return metrics


def run_reward_functions(cfg: GRPORunConfig, *, retrieval: bool) -> list:
    """The run's reward functions (training: ``retrieval=cfg.retrieval_reward``; the dev curve: always all three)."""
    from carelab.care.rewards import reward_functions

    return reward_functions(accuracy_normalized=cfg.accuracy_normalized, max_context_share=cfg.max_quote_share,
                            exact_only=cfg.retrieval_exact_only, retrieval=retrieval)


def _usable_adapter(cfg: GRPORunConfig, grpo_adapter: Path, dest: Path) -> None:
    """``grpo_adapter`` as an adapter for the untouched base: stacked onto the SFT adapter when GRPO started from one."""
    if cfg.init_adapter:
        from carelab.care.train.adapters import stack_lora_adapters

        stack_lora_adapters(cfg.init_adapter, str(grpo_adapter), str(dest))
    else:
        import shutil

        shutil.copytree(grpo_adapter, dest, dirs_exist_ok=True)


def _write_grpo_outputs(cfg: GRPORunConfig, out: Path, history: list[dict], metrics: dict) -> None:
    """The reward curve, the final adapter (SFT + GRPO stacked when started from SFT) and the metrics."""
    with (out / "reward_curve.jsonl").open("w") as fh:
        for h in history:
            fh.write(json.dumps({k: v for k, v in h.items() if k == "step" or k.startswith(("reward", "kl", "loss",
                                 "completions/mean_length"))}) + "\n")
    _usable_adapter(cfg, out / "grpo-adapter", out / FINAL_ADAPTER)
    best = best_heldout_step(read_heldout(out)) if cfg.heldout_keep_adapters else None
    if best is not None and (out / HELDOUT_ADAPTERS / f"step-{best}").exists():
        _usable_adapter(cfg, out / HELDOUT_ADAPTERS / f"step-{best}", out / DEV_BEST_ADAPTER)
        metrics.update(dev_best_step=best, dev_best_adapter=str(out / DEV_BEST_ADAPTER))
    report = write_heldout_report(out)
    if report is not None:
        metrics["heldout_report"] = str(report)
    (out / "grpo_metrics.json").write_text(json.dumps(metrics, indent=2))
