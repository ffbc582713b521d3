"""fp32 linear layers on the CPU through oneDNN instead of torch's BLAS.

Why: torch computes an fp32 ``nn.Linear`` on the CPU with its BLAS (MKL in the official wheels). On this project's
2-core AMD EPYC machine, at SmolLM2's shapes and 80–2,048 tokens, MKL's kernels ran at 70–178 GFLOP/s while
oneDNN's (also inside torch, the library inductor uses for CPU linears) ran the same products at 172–414 GFLOP/s,
1.3–3.2× faster (``benchmarks/linear_backend.py``); only for 1–16 tokens through the small k/v and q/o layers
was it slower. The numbers stay fp32: only the order of the
additions differs, as between any two BLAS builds (errors against a float64 product of the same order).

``onednn_linears(model)`` switches every plain ``nn.Linear`` of a model for the duration of a block (generation,
a training run), and every plain PEFT LoRA layer to one fused product (:func:`lora_linear`);
``CARELAB_LINEAR=blas`` turns both off everywhere, e.g. to compare or to reproduce outputs made with the BLAS bit
for bit.
"""

from __future__ import annotations

import functools
import os
import types
from typing import Any

#: Environment switch: ``onednn`` (default) or ``blas`` (torch's own fp32 matmul everywhere).
BACKEND_ENV = "CARELAB_LINEAR"
#: Environment switch: ``1`` (default) fuses PEFT's LoRA layers into one product under ``onednn_linears``, ``0``
#: leaves them to PEFT (their base and adapter linears still by oneDNN); read where a block starts.
FUSED_LORA_ENV = "CARELAB_FUSED_LORA"


def _switch(name: str, default: str, choices: tuple[str, ...]) -> str:
    """The environment switch ``name`` (``default`` when unset); a value outside ``choices`` is a one-line error."""
    choice = os.environ.get(name, default).strip().lower()
    if choice not in choices:
        raise ValueError(f"{name}={choice!r}: expected " + " or ".join(repr(c) for c in choices))
    return choice


def enabled() -> bool:
    """Whether fp32 CPU linears should go through oneDNN: asked for (default) and available in this torch build."""
    if _switch(BACKEND_ENV, "onednn", ("onednn", "blas")) == "blas":
        return False
    import torch

    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x, weight, bias=None):
    """``F.linear(x, weight, bias)`` by oneDNN for fp32 CPU tensors (differentiable), else by ``F.linear``."""
    import torch
    import torch.nn.functional as F

    if not (x.dtype == weight.dtype == torch.float32 and x.device.type == weight.device.type == "cpu"
            and (bias is None or bias.dtype == torch.float32) and x.dim() >= 2):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _linear_function().apply(x, weight, bias)
    return _onednn(x, weight, bias)


def _onednn(x, weight, bias):
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@functools.cache
def _linear_function() -> type:
    """The autograd function, built on first use so that importing this module does not import torch."""
    import torch

    class LinearFunction(torch.autograd.Function):
        """y = x Wᵀ + b with every product by oneDNN; saves x only when W needs a gradient (frozen base layers
        under LoRA keep the memory of ``F.linear`` with a frozen weight)."""

        @staticmethod
        def forward(ctx: Any, x, weight, bias):
            ctx.weight_grad = ctx.needs_input_grad[1]
            ctx.bias_grad = bias is not None and ctx.needs_input_grad[2]
            ctx.save_for_backward(x if ctx.weight_grad else None, weight)
            return _onednn(x, weight, bias)

        @staticmethod
        def backward(ctx: Any, grad):
            x, weight = ctx.saved_tensors
            grad_x = grad_w = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_x = _onednn(grad, weight.t(), None)  # grad · W
            flat = grad.reshape(-1, grad.shape[-1])
            if ctx.weight_grad:
                grad_w = _onednn(flat.t(), x.reshape(-1, x.shape[-1]).t(), None)  # gradᵀ · x
            if ctx.bias_grad:
                grad_b = flat.sum(0)
            return grad_x, grad_w, grad_b

    return LinearFunction


def _linear_forward(module, x):
    return linear(x, module.weight, module.bias)


def lora_linear(x, weight, bias, lora_a, lora_b, scaling: float):
    """``x Wᵀ + b + scaling · (x Aᵀ) Bᵀ`` for fp32 CPU tensors with a frozen ``W`` / ``b``: PEFT's LoRA layer in one
    product (differentiable in ``x``, ``A`` and ``B``).

    Why: PEFT adds the adapter's output to the base layer's with a scaling multiply and an add over the whole output,
    forward and backward, and makes three small calls per layer; here the rank-r product accumulates into the base
    layer's output in place. Measured: GRPO updates 1.18× faster, SFT 1.02× (``docs/care.md``).
    """
    return _lora_function().apply(x, weight, bias, lora_a, lora_b, scaling)


@functools.cache
def _lora_function() -> type:
    import torch

    class LoraLinearFunction(torch.autograd.Function):
        """y = x Wᵀ + b + s (x Aᵀ) Bᵀ, every product by oneDNN (the rank-r one accumulated into y by torch's addmm);
        saves x only when A needs a gradient and x Aᵀ only when B does."""

        @staticmethod
        def forward(ctx: Any, x, weight, bias, lora_a, lora_b, scaling):
            down = _onednn(x.reshape(-1, x.shape[-1]), lora_a, None)  # (tokens, r)
            out = _onednn(x, weight, bias)
            out.view(-1, out.shape[-1]).addmm_(down, lora_b.t(), alpha=scaling)
            ctx.scaling = scaling
            ctx.save_for_backward(x if ctx.needs_input_grad[3] else None,
                                  down if ctx.needs_input_grad[4] else None, weight, lora_a, lora_b)
            return out

        @staticmethod
        def backward(ctx: Any, grad):
            x, down, weight, lora_a, lora_b = ctx.saved_tensors
            flat = grad.reshape(-1, grad.shape[-1])
            grad_down = _onednn(flat, lora_b.t(), None)  # grad · B, (tokens, r)
            grad_x = grad_a = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_x = _onednn(grad, weight.t(), None)  # grad · W
                grad_x.view(-1, grad_x.shape[-1]).addmm_(grad_down, lora_a, alpha=ctx.scaling)
            if ctx.needs_input_grad[3]:  # s · grad_downᵀ · x
                grad_a = _onednn(grad_down.t(), x.reshape(-1, x.shape[-1]).t(), None).mul_(ctx.scaling)
            if ctx.needs_input_grad[4]:  # s · gradᵀ · down, as (downᵀ · grad)ᵀ: 5-10x faster than reducing gradᵀ
                grad_b = _onednn(down.t().contiguous(), flat.t(), None).t().mul_(ctx.scaling)
            return grad_x, None, None, grad_a, grad_b, None

    return LoraLinearFunction


def _fusable_adapter(module, x, args, kwargs) -> str | None:
    """The one active plain-LoRA adapter of a PEFT ``lora.Linear`` that :func:`lora_linear` computes exactly as PEFT
    would (no dropout, variant, merge, bias or hook; frozen fp32 base on the CPU), else None."""
    import torch

    if args or kwargs or module.disable_adapters or module.merged:
        return None
    active = [name for name in module.active_adapters if name in module.lora_A]
    if len(active) != 1 or active[0] in getattr(module, "lora_variant", {}):
        return None
    name = active[0]
    base, lora_a, lora_b = module.base_layer, module.lora_A[name], module.lora_B[name]
    if not (type(base) is type(lora_a) is type(lora_b) is torch.nn.Linear and lora_a.bias is None
            and lora_b.bias is None and isinstance(module.lora_dropout[name], torch.nn.Identity)):
        return None
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return None
    tensors = [x, base.weight, lora_a.weight, lora_b.weight] + ([base.bias] if base.bias is not None else [])
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors) or x.dim() < 2:
        return None
    if any(m._forward_hooks or m._forward_pre_hooks for m in (base, lora_a, lora_b)):
        return None
    return name


def _lora_forward(module, x, *args, **kwargs):
    name = _fusable_adapter(module, x, args, kwargs)
    if name is None:
        return type(module).forward(module, x, *args, **kwargs)
    base = module.base_layer
    return lora_linear(x, base.weight, base.bias, module.lora_A[name].weight, module.lora_B[name].weight,
                       module.scaling[name])


def _peft_lora_linear() -> type | None:
    """PEFT's LoRA linear layer class, or None without PEFT or when fusing is switched off."""
    if _switch(FUSED_LORA_ENV, "1", ("1", "0")) == "0":
        return None
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:
        return None
    return Linear


class onednn_linears:  # noqa: N801 - used as a context manager, like a function
    """Within the block, every plain ``nn.Linear`` of ``model`` computes through :func:`linear` and every PEFT
    ``lora.Linear`` through :func:`lora_linear` where it can; nothing when the backend is off
    (``CARELAB_LINEAR=blas``) or unavailable. Nested blocks over the same model are harmless."""

    def __init__(self, model) -> None:
        self.model = model
        self.switched: list = []

    def __enter__(self):
        if not enabled():
            return self
        import torch

        lora_layer = _peft_lora_linear()
        for module in self.model.modules():
            if "forward" in vars(module):
                continue
            if type(module) is torch.nn.Linear:
                module.forward = types.MethodType(_linear_forward, module)  # a copy of the model rebinds it
            elif lora_layer is not None and type(module) is lora_layer:
                module.forward = types.MethodType(_lora_forward, module)
            else:
                continue
            self.switched.append(module)
        return self

    def __exit__(self, *exc) -> None:
        for module in self.switched:
            del module.forward
        self.switched = []
