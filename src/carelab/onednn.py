"""fp32 linear layers on the CPU through oneDNN instead of torch's BLAS.

Why: torch computes an fp32 ``nn.Linear`` on the CPU with its BLAS (MKL in the official wheels). On this project's
2-core AMD EPYC machine, at SmolLM2's shapes and 80–2,048 tokens, MKL's kernels ran at 70–178 GFLOP/s while
oneDNN's (also inside torch, the library inductor uses for CPU linears) ran the same products at 172–414 GFLOP/s,
1.3–3.2× faster (``benchmarks/linear_backend.py``); only for 1–16 tokens through the small k/v and q/o layers
was it slower. The numbers stay fp32: only the order of the
additions differs, as between any two BLAS builds (errors against a float64 product of the same order).

``onednn_linears(model)`` switches every plain ``nn.Linear`` of a model for the duration of a block (generation,
a training run); ``CARELAB_LINEAR=blas`` turns it off everywhere, e.g. to compare or to reproduce outputs made
with the BLAS bit for bit.
"""

from __future__ import annotations

import functools
import os
import types
from typing import Any

#: Environment switch: ``onednn`` (default) or ``blas`` (torch's own fp32 matmul everywhere).
BACKEND_ENV = "CARELAB_LINEAR"


def enabled() -> bool:
    """Whether fp32 CPU linears should go through oneDNN: asked for (default) and available in this torch build."""
    choice = os.environ.get(BACKEND_ENV, "onednn").strip().lower()
    if choice not in ("onednn", "blas"):
        raise ValueError(f"{BACKEND_ENV}={choice!r}: expected 'onednn' or 'blas'")
    if choice == "blas":
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


class onednn_linears:  # noqa: N801 - used as a context manager, like a function
    """Within the block, every plain ``nn.Linear`` of ``model`` computes through :func:`linear`; nothing when the
    backend is off (``CARELAB_LINEAR=blas``) or unavailable. Nested blocks over the same model are harmless."""

    def __init__(self, model) -> None:
        self.model = model
        self.switched: list = []

    def __enter__(self):
        if not enabled():
            return self
        import torch

        for module in self.model.modules():
            if type(module) is torch.nn.Linear and "forward" not in vars(module):
                module.forward = types.MethodType(_linear_forward, module)  # a copy of the model rebinds it
                self.switched.append(module)
        return self

    def __exit__(self, *exc) -> None:
        for module in self.switched:
            del module.forward
        self.switched = []
