"""One switch from an adapter name to a ready-to-train setup (PEFT config + preprocessing + optimizer).

Why: the study notes group LoRA's descendants into scaling/learning-rate (rsLoRA, LoRA+), structural
(DoRA) and gradient/initialisation methods (PiSSA, LoRA-GA, LoRA-FA, LoRA-Pro). Each needs a different
mix of ``LoraConfig`` switches, a preprocessing pass (LoRA-GA estimates gradients before
``get_peft_model``) or a special optimizer (LoRA+, LoRA-FA, LoRA-Pro). ``carelab care sft/grpo
--adapter NAME`` and the fidelity experiment go through :func:`prepare_adapter` and
:func:`make_optimizer` so every trainer gets the same, tested wiring.

    >>> ADAPTER_CHOICES[:3]
    ('lora', 'rslora', 'dora')
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import torch
from peft import LoraConfig
from torch import nn

from carelab.lora.lorapro import LoRAProAdamW

log = logging.getLogger(__name__)

ADAPTER_CHOICES = ("lora", "rslora", "dora", "pissa", "lora-ga", "lora+", "lora-fa", "lora-pro", "full")
LORAPLUS_LR_RATIO = 16.0  # ηB/ηA recommended by the LoRA+ paper for decoder LMs
LORAGA_MAX_BATCHES = 8  # gradient-estimation batches LoRA-GA consumes from train_batches
#: adapters trained against a rewritten base; their final save is converted to a plain LoRA delta
CONVERTED_ON_SAVE = ("pissa", "lora-ga")

OptimizerFactory = Callable[[Iterable[nn.Parameter] | nn.Module, float], torch.optim.Optimizer]


@dataclass
class AdapterSetup:
    """What a trainer needs: the model to train, its PEFT config, and how to build its optimizer.

    ``optimizer_factory(model_or_params, lr)`` builds the optimizer; ``None`` means "use the trainer's
    default AdamW". Factories of lora+/lora-fa/lora-pro need the model (not bare parameters).
    """

    model: nn.Module
    peft_config: LoraConfig | None
    optimizer_factory: OptimizerFactory | None
    name: str
    notes: list[str] = field(default_factory=list)


def _check_name(name: str) -> str:
    key = name.strip().lower()
    if key not in ADAPTER_CHOICES:
        raise ValueError(f"unknown adapter {name!r}; choose one of {', '.join(ADAPTER_CHOICES)}")
    return key


def resolve_target_modules(model: nn.Module, target_modules: str | Iterable[str]) -> list[str]:
    """Leaf names of the linear layers to adapt; ``"all-linear"`` excludes the output head, as PEFT does.

    Embeddings are ``nn.Embedding`` (never linear); the LM head is the model's output embedding.
    """
    if isinstance(target_modules, str) and target_modules.strip().lower() != "all-linear":
        return [t.strip() for t in target_modules.split(",") if t.strip()]
    if not isinstance(target_modules, str):
        return list(target_modules)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: dict[str, None] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not head and not name.endswith("lm_head"):
            names.setdefault(name.rsplit(".", 1)[-1], None)
    if not names:
        raise ValueError("the model has no linear layers to adapt")
    return list(names)


def _peft_targets(target_modules: str | Iterable[str]) -> str | list[str]:
    if isinstance(target_modules, str):
        if target_modules.strip().lower() == "all-linear":
            return "all-linear"
        return [t.strip() for t in target_modules.split(",") if t.strip()]
    return list(target_modules)


def _decay_groups(params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """HF-style groups: decay for matrices, none for biases and norm weights (1-D)."""
    decay, no_decay = [], []
    for _, p in params:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def _need_module(name: str, model_or_params) -> nn.Module:
    if not isinstance(model_or_params, nn.Module):
        raise ValueError(f"the {name} optimizer needs the model (to find lora_A/lora_B), not bare parameters")
    return model_or_params


def _build_optimizer(name: str, model_or_params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "lora+":
        from peft.optimizers import create_loraplus_optimizer

        model = _need_module(name, model_or_params)
        return create_loraplus_optimizer(model, optimizer_cls=torch.optim.AdamW, lr=lr,
                                         loraplus_lr_ratio=LORAPLUS_LR_RATIO, weight_decay=weight_decay)
    if name in ("lora-pro", "lora-fa"):
        # LoRA-FA = A frozen + the best g_B for fixed A, which is LoRA-Pro restricted to B (our optimizer
        # does it in float32; PEFT's LoraFAOptimizer autocasts the solve to bf16 on CPU).
        model = _need_module(name, model_or_params)
        return LoRAProAdamW(_decay_groups(model.named_parameters(), weight_decay), lr=lr,
                            weight_decay=weight_decay, model=model)
    if isinstance(model_or_params, nn.Module):
        groups = _decay_groups(model_or_params.named_parameters(), weight_decay)
    else:
        groups = [{"params": [p for p in model_or_params if p.requires_grad], "weight_decay": weight_decay}]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def _loraga_step(model: nn.Module, batches: list[dict]) -> Callable[[], None]:
    device = next(model.parameters()).device

    def train_step() -> None:
        with warnings.catch_warnings():
            # PEFT's counting hook warns that no *inputs* need grad; only the weights do, as intended.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for batch in batches:
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                if "labels" not in batch:
                    labels = batch["input_ids"].clone()
                    if "attention_mask" in batch:
                        labels[batch["attention_mask"] == 0] = -100
                    batch["labels"] = labels
                keep = ("input_ids", "attention_mask", "labels")
                model(**{k: v for k, v in batch.items() if k in keep}).loss.backward()

    return train_step


def prepare_adapter(
    name: str,
    model: nn.Module,
    *,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.05,
    target_modules: str | Iterable[str] = "all-linear",
    lr: float,
    weight_decay: float = 0.0,
    train_batches: Iterable[dict] | None = None,
    seed: int | None = None,
) -> AdapterSetup:
    """Wrap ``model`` for adapter ``name`` (one of :data:`ADAPTER_CHOICES`) and return an :class:`AdapterSetup`.

    ``seed`` seeds torch's generator right before the adapter's random initialisation (LoRA's A), so that a run
    with a fixed seed starts from the same weights: the global generator's state at this point differs from
    process to process (an unseeded SFT run drew a different A every time), and trainers seed only later.

    ``train_batches`` (dicts with ``input_ids`` [+ ``attention_mask``, ``labels``]) are required by
    ``lora-ga``, which estimates full-weight gradients on up to 8 of them before initialising A and B.
    PiSSA and LoRA-GA rewrite the base weights (W0 ← W0 − s·B·A) so the wrapped model starts unchanged;
    their final ``save_pretrained`` writes the equivalent plain LoRA (rank 2r) for the original base.
    """
    from peft import get_peft_model

    key = _check_name(name)
    if r <= 0:
        raise ValueError(f"rank r must be positive, got {r}")
    if seed is not None:
        torch.manual_seed(seed)
    factory: OptimizerFactory | None = None
    notes: list[str] = []
    if key == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return AdapterSetup(model=model, peft_config=None, optimizer_factory=None, name=key,
                            notes=["all parameters trained (full fine-tuning)"])

    kwargs: dict = dict(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=_peft_targets(target_modules),
                        task_type="CAUSAL_LM", bias="none")
    if key == "rslora":
        kwargs["use_rslora"] = True
    elif key == "dora":
        kwargs["use_dora"] = True
    elif key == "pissa":
        hidden = getattr(getattr(model, "config", None), "hidden_size", 0) or 0
        kwargs["init_lora_weights"] = "pissa" if hidden <= 2048 else "pissa_niter_4"
        notes.append("PiSSA: A, B from the top-r SVD of W0; residual stays frozen")
    elif key == "lora-ga":
        from peft import LoraGAConfig, preprocess_loraga

        if train_batches is None:
            raise ValueError("lora-ga needs train_batches (a few training batches) to estimate gradients")
        batches = []
        for batch in train_batches:
            batches.append(batch)
            if len(batches) >= LORAGA_MAX_BATCHES:
                break
        if not batches:
            raise ValueError("lora-ga got an empty train_batches iterable")
        kwargs["target_modules"] = resolve_target_modules(model, target_modules)
        kwargs["init_lora_weights"] = "lora_ga"
        kwargs["lora_ga_config"] = LoraGAConfig()
        config = LoraConfig(**kwargs)
        preprocess_loraga(model, config, _loraga_step(model, batches))
        notes.append(f"LoRA-GA: gradients estimated on {len(batches)} batches")
    if key != "lora-ga":
        config = LoraConfig(**kwargs)
    peft_model = get_peft_model(model, config)

    _save_portably(peft_model, convert=key in CONVERTED_ON_SAVE)
    if key == "lora-fa":
        for pname, p in peft_model.named_parameters():
            if "lora_A" in pname:
                p.requires_grad_(False)
        notes.append("LoRA-FA: lora_A frozen at its random init; B gets the best gradient for fixed A")
    if key in ("lora+", "lora-fa", "lora-pro"):
        factory = partial(_build_optimizer, key, weight_decay=weight_decay)
    return AdapterSetup(model=peft_model, peft_config=config, optimizer_factory=factory, name=key, notes=notes)


def _save_portably(peft_model: nn.Module, convert: bool) -> None:
    """Make ``peft_model.save_pretrained`` (what every Trainer calls) write an adapter for the untouched base.

    PiSSA/LoRA-GA train against a rewritten base (W0 − s·B0·A0), so their raw adapter is wrong on the
    original model and cannot be stacked; the final save is converted to a plain LoRA of rank 2r via PEFT's
    ``path_initial_model_for_weight_conversion``. Trainer checkpoints (``checkpoint-N``) stay raw so
    ``--resume`` reloads them into the residual model. ``save_embedding_layers=False`` (carelab never adapts
    embeddings) skips PEFT's Hugging Face Hub lookup of the base model's config at every save.
    """
    import shutil
    import tempfile
    import weakref
    from pathlib import Path

    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    raw_save = peft_model.save_pretrained
    initial: str | None = None
    if convert:
        folder = tempfile.mkdtemp(prefix="carelab-initial-adapter-")
        weakref.finalize(peft_model, shutil.rmtree, folder, True)
        initial = str(Path(folder) / "initial_adapter")
        config = peft_model.peft_config["default"]
        init_weights, config.init_lora_weights = config.init_lora_weights, True  # PEFT requires True here
        try:
            raw_save(initial, save_embedding_layers=False)
        finally:
            config.init_lora_weights = init_weights

    def save_pretrained(save_directory: str, *args, **kwargs) -> None:
        kwargs.setdefault("save_embedding_layers", False)
        if initial is None or Path(save_directory).name.startswith(PREFIX_CHECKPOINT_DIR):
            raw_save(save_directory, *args, **kwargs)
            return
        kwargs.setdefault("path_initial_model_for_weight_conversion", initial)
        config = peft_model.peft_config["default"]
        # The conversion reloads the initial adapter, whose state-dict helper would look the base name up on
        # the Hub; with no name it skips that, and the saved config takes the name from the model itself.
        name, config.base_model_name_or_path = config.base_model_name_or_path, None
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*changes the base weights")  # the conversion itself
                raw_save(save_directory, *args, **kwargs)
        finally:
            config.base_model_name_or_path = name

    peft_model.save_pretrained = save_pretrained


def make_optimizer(setup: AdapterSetup, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer for ``setup`` over ``model``'s trainable parameters (``Trainer(optimizers=(opt, None))``).

    ``model`` is normally ``setup.model`` (pass the trainer's model if it wrapped it). Without a special
    optimizer this is AdamW with HF-style decay groups (no decay for biases and norm weights).
    """
    return _build_optimizer(setup.name, model, lr, weight_decay)
