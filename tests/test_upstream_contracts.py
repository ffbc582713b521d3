"""Guards on every private or version-sensitive upstream API carelab relies on.

pyproject allows ranges (``trl>=1.10,<2``, ``transformers>=5.0,<6``, ``peft>=0.21,<0.22``); the Makefile installs
the tested lock (``constraints.txt``). When a newer minor changes a shape carelab depends on, these fail by name
instead of letting GRPO silently lose its curriculum or an adapter save its wrong form.
"""

from __future__ import annotations

import inspect
import re

import pytest


def _source(obj) -> str:
    return re.sub(r"\s+", " ", inspect.getsource(obj))


def test_grpo_trainer_still_builds_its_train_sampler_through_get_train_sampler():
    """carelab.care.train overrides the private ``GRPOTrainer._get_train_sampler`` with the curriculum sampler."""
    from trl import GRPOTrainer

    assert hasattr(GRPOTrainer, "_get_train_sampler"), "TRL dropped GRPOTrainer._get_train_sampler"
    params = list(inspect.signature(GRPOTrainer._get_train_sampler).parameters.values())
    assert [p.name for p in params] == ["self", "dataset"] and params[1].default is None, params
    # the override only matters if the train dataloader still asks for it
    assert "sampler_fn=self._get_train_sampler" in _source(GRPOTrainer.get_train_dataloader)


def test_grpo_sampler_shape_matches_what_the_curriculum_reproduces():
    """The curriculum mirrors TRL's RepeatSampler arguments; a change there needs a change in CareGRPOTrainer."""
    from trl import GRPOTrainer

    src = _source(GRPOTrainer._get_train_sampler)
    for expected in ("mini_repeat_count=self.num_generations",
                     "batch_size=self.args.generation_batch_size // self.num_generations",
                     "repeat_count=self.num_iterations * self.args.steps_per_generation"):
        assert expected in src, f"TRL's GRPO sampler changed: {expected!r} not found"
    init = _source(GRPOTrainer.__init__)
    for attr in ("self.num_generations =", "self.num_iterations ="):
        assert attr in init, f"GRPOTrainer no longer sets {attr.split()[0]}"


def test_grpo_config_still_has_the_fields_the_curriculum_reads(tmp_path):
    from trl import GRPOConfig

    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                      num_generations=2, max_steps=3, use_cpu=True, report_to=[])
    for name in ("generation_batch_size", "steps_per_generation", "gradient_accumulation_steps", "max_steps", "seed"):
        assert isinstance(getattr(args, name, None), int), f"GRPOConfig.{name} missing or not an int"
    assert args.generation_batch_size == 8 and args.steps_per_generation == 2


def test_care_trainer_override_keeps_the_upstream_signature():
    from trl import GRPOTrainer

    from carelab.care.train.grpo import _curriculum_trainer_class

    care = _curriculum_trainer_class()
    assert care._get_train_sampler is not GRPOTrainer._get_train_sampler
    ours = inspect.signature(care._get_train_sampler).parameters
    theirs = inspect.signature(GRPOTrainer._get_train_sampler).parameters
    assert list(ours) == list(theirs) and ours["dataset"].default is theirs["dataset"].default


def test_config_name_or_path_is_still_backed_by_the_private_attribute():
    """carelab.models writes ``config._name_or_path`` so adapters record a portable base-model spec."""
    from transformers import PretrainedConfig

    cfg = PretrainedConfig()
    cfg._name_or_path = "smollm2-135m-instruct"
    assert cfg.name_or_path == "smollm2-135m-instruct"
    assert cfg.to_dict().get("_name_or_path", "smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_peft_save_still_converts_and_trainer_still_saves_through_save_pretrained():
    """carelab.lora.variants wraps ``PeftModel.save_pretrained`` (Trainer calls it) to convert PiSSA/LoRA-GA."""
    from peft import PeftModel
    from transformers import Trainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    params = inspect.signature(PeftModel.save_pretrained).parameters
    assert "path_initial_model_for_weight_conversion" in params and "save_embedding_layers" in params
    assert PREFIX_CHECKPOINT_DIR == "checkpoint"  # raw checkpoints are told apart by this folder prefix
    assert "self.model.save_pretrained(" in _source(Trainer._save)


@pytest.mark.parametrize("module", ["trl", "transformers", "peft", "datasets", "accelerate"])
def test_installed_versions_are_inside_the_declared_ranges(module):
    """The lock and pyproject agree: a lock outside pyproject's ranges would test a combination users never get."""
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement

    reqs = {Requirement(r).name: Requirement(r) for r in requires("carelab") or [] if "extra ==" not in r}
    assert module in reqs, f"{module} is no longer a declared dependency"
    assert reqs[module].specifier.contains(version(module), prereleases=True), (module, version(module))


def test_signal_enum_still_has_its_value_map():
    """carelab.watermark.sandbox names a signal via ``signal.Signals._value2member_map_`` (stdlib enum)."""
    import signal

    assert signal.SIGKILL in signal.Signals._value2member_map_


def test_fused_lm_head_still_reads_its_tile_size_from_the_module_constant():
    """carelab.care.train tiles TRL's fused LM head finely on CPU by lowering this private constant."""
    import inspect

    from trl.trainer import utils as trl_utils

    assert isinstance(trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, int)
    assert "_CHUNKED_LOGPROB_CHUNK_SIZE" in inspect.getsource(trl_utils.add_fused_lm_head)


def test_fused_lm_head_still_chooses_its_compact_path_through_the_device_check():
    """carelab.care.train.common.completion_positions_only flips ``_use_triton`` in TRL's utils so the fused LM head
    projects only the labelled positions on CPU too; that only works while the choice reads this name."""
    from trl.trainer import utils as trl_utils

    assert callable(trl_utils._use_triton)
    assert "compact = _use_triton(hidden_states.device)" in _source(trl_utils.add_fused_lm_head)
