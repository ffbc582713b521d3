"""One GPT backbone for both objectives: the AR/diffusion comparison is fair by construction.

The paper's claim is about the *objective*, so the network must be identical for both: a nanoGPT-style
decoder (RoPE, RMSNorm, SwiGLU, no biases, tied embeddings). The only switches are ``causal`` (AR:
causal attention; MDM: bidirectional) and a reserved ``mask_id`` row in the vocabulary, which exists
in both models (so parameter counts match) but is only ever fed to the MDM. The logit of ``mask_id``
is never a valid prediction and is set to -inf (MDLM's "SUBS" parametrisation) for both objectives.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    """Shape of the backbone. ``vocab_size`` includes the [MASK] id (by convention the last id)."""

    vocab_size: int = 257
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    causal: bool = True
    mask_id: int | None = None  # defaults to vocab_size - 1
    mlp_hidden: int | None = None  # SwiGLU hidden width; defaults to ~8/3·d rounded up to 32
    rope_base: float = 10000.0
    #: Ordered AR (σ-GPT style): add an embedding of the *next target's* position to every input, so an AR
    #: model trained on several token orders knows which position it predicts (a proper factorisation).
    target_positions: bool = False

    def __post_init__(self) -> None:
        if self.mask_id is None:
            self.mask_id = self.vocab_size - 1
        if self.mlp_hidden is None:
            self.mlp_hidden = 32 * math.ceil(8 * self.n_embd / 3 / 32)
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd={self.n_embd} must split into an even head size over n_head={self.n_head}")


#: Named model sizes for sweeps (d, layers, heads). Any "d<d>l<layers>h<heads>" string also works.
MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    "xxs": (48, 2, 2),
    "xs": (64, 2, 2),
    "s": (96, 3, 3),
    "m": (128, 4, 4),
    "l": (192, 6, 6),
    "xl": (256, 8, 8),
}


def size_config(name: str, **overrides) -> GPTConfig:
    """Build a ``GPTConfig`` from a size name (``MODEL_SIZES``) or a ``d128l4h4`` spec."""
    if name in MODEL_SIZES:
        d, n_layer, n_head = MODEL_SIZES[name]
    else:
        m = re.fullmatch(r"d(\d+)l(\d+)h(\d+)", name)
        if not m:
            raise ValueError(f"unknown model size {name!r}: use one of {sorted(MODEL_SIZES)} or 'd<dim>l<layers>h<heads>'")
        d, n_layer, n_head = (int(g) for g in m.groups())
    return replace(GPTConfig(), n_embd=d, n_layer=n_layer, n_head=n_head, mlp_hidden=None, **overrides)


class Rotary(nn.Module):
    """Rotary position embedding tables (cos/sin) for one head size, cached up to ``block_size``."""

    def __init__(self, head_dim: int, block_size: int, base: float):
        super().__init__()
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        t = torch.arange(block_size + 1, dtype=torch.float32)  # +1: a permuted row of T+1 tokens has position T
        freqs = torch.outer(t, inv)  # (T, hd/2)
        self.register_buffer("cos", freqs.cos()[None, None], persistent=False)
        self.register_buffer("sin", freqs.sin()[None, None], persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate (B, H, T, hd) by position: 0..T-1, or the given (B, T) ``positions`` (permuted orders)."""
        T = x.size(-2)
        if positions is None:
            cos, sin = self.cos[..., :T, :], self.sin[..., :T, :]
        else:
            cos, sin = self.cos[0, 0][positions][:, None], self.sin[0, 0][positions][:, None]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    """Multi-head self-attention; ``causal`` decides AR vs bidirectional (the one switch)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.causal = cfg.n_head, cfg.causal
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.rotary = Rotary(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_base)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    """Gated MLP: W2(silu(W1 x) * W3 x), no biases."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.mlp_hidden is not None
        self.w13 = nn.Linear(cfg.n_embd, 2 * cfg.mlp_hidden, bias=False)
        self.w2 = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.n_embd)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), positions)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """The shared backbone. ``forward(idx) -> logits (B, T, vocab)``; the [MASK] logit is -inf."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = nn.RMSNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        self.wtp: nn.Embedding | None = None
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("w2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.target_positions:  # created last, so all other weights equal a plain AR/MDM model's at one seed
            self.wtp = nn.Embedding(cfg.block_size + 1, cfg.n_embd)
            self._init(self.wtp)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def causal(self) -> bool:
        return self.config.causal

    @property
    def mask_id(self) -> int:
        assert self.config.mask_id is not None
        return self.config.mask_id

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                target_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab). ``positions``/``target_positions`` (B, T) give a permuted token order.

        ``positions`` are the tokens' places in the text (RoPE); ``target_positions`` the place each input
        predicts next (only for ``target_positions`` models; default: left to right, position + 1).
        """
        T = idx.size(1)
        if idx.size(1) > self.config.block_size:
            raise ValueError(f"sequence length {T} > block_size {self.config.block_size}")
        x = self.wte(idx)
        if self.wtp is not None:
            if target_positions is None:
                target_positions = torch.arange(1, T + 1, device=idx.device).expand(idx.size(0), T)
            x = x + self.wtp(target_positions)
        for blk in self.blocks:
            x = blk(x, positions)
        logits = self.lm_head(self.norm_f(x))
        # [MASK] is an input symbol only; never predict it (both objectives, so they stay identical).
        return logits.index_fill(-1, torch.tensor([self.mask_id], device=logits.device), float("-inf"))

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; ``non_embedding`` drops the (tied) token and target-position embeddings — the paper's N."""
        n = sum(p.numel() for p in self.parameters())
        if not non_embedding:
            return n
        return n - self.wte.weight.numel() - (self.wtp.weight.numel() if self.wtp is not None else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6·(all matmul params) + attention scores.

        The paper's C = 6·N·D uses non-embedding N only; this fuller count (incl. the LM head and the
        12·L·d·T attention term, as in nanoGPT/PaLM) is what the throughput benchmark divides by.
        """
        cfg = self.config
        matmul_params = self.num_params(non_embedding=True) + cfg.vocab_size * cfg.n_embd
        return 6.0 * matmul_params + 12.0 * cfg.n_layer * cfg.n_embd * seq_len


def load_run_model(run_dir) -> GPT:
    """The trained model of a finished sweep run (``RUN_DIR/model.pt``), in eval mode, on the CPU."""
    from pathlib import Path

    from carelab.runs import InputError

    path = Path(run_dir) / "model.pt"
    if not path.exists():
        raise InputError(path, "no trained model here (is the run finished?)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return model.eval()
