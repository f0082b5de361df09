r"""The Spatial-Statistical Self-Attention Module (SSAM) of ArtBank, reconstructed.

ArtBank (Zhang et al., AAAI 2024, arXiv 2312.06135) reparameterises each Implicit Style
Prompt Bank matrix through SSAM "to accelerate training". Its code was never released;
the maintainer describes it as "AdaAttN + row-wise and column-wise attention". This module
is our reading of that sentence. For one collection with prompt matrix
:math:`P \in \mathbb{R}^{n \times d}` (n tokens, d channels), all three branches read the
same unit-scale input :math:`X = \mathrm{LN}(P)`, so their outputs and gradients are of one
order of magnitude (word embeddings are ~0.014 per channel at d = 768; LN lifts them to 1).

Row (spatial) attention mixes tokens, multi-head (Vaswani et al. 2017, Eq. 1):

.. math:: R = \mathrm{softmax}\big(X W_q (X W_k)^\top / \sqrt{d_h}\big)\, X W_v

Column attention mixes channels: each channel is a token whose descriptor is its
n values, :math:`X^\top \in \mathbb{R}^{d \times n}`, with :math:`A_q, A_k, A_v \in
\mathbb{R}^{n \times n}`:

.. math:: C = \Big(\mathrm{softmax}\big(X^\top A_q (X^\top A_k)^\top / \sqrt{n}\big)\,
          X^\top A_v\Big)^\top

Statistical attention is AdaAttN (Liu et al., ICCV 2021, Eqs. 2-4) applied to the bank
itself: attention between the tokens gives a per-token weighted mean and standard
deviation of :math:`V = X U_v`, which re-style the normalised tokens :math:`\bar X`:

.. math:: A = \mathrm{softmax}\big(\bar X U_q (\bar X U_k)^\top / \sqrt{d}\big),\quad
          M = A V,\quad S = \sqrt{\mathrm{ReLU}(A (V \odot V) - M \odot M) + \epsilon}

.. math:: T = S \odot \bar X + M

The branches are summed, projected by a zero-initialised :math:`W_o` (as ControlNet's zero
convolutions and DiT's adaLN-zero) and added back at the prompt's own scale, the per-token
RMS :math:`\rho(P) = \sqrt{\mathrm{mean}_j P_{ij}^2}` (a constant in the backward pass):

.. math:: \mathrm{SSAM}(P) = P + \rho(P) \odot (R + C + T) W_o

So training starts exactly at the initial prompt matrix (the initializer word's embedding),
:math:`W_o` gets a gradient from the first step, and every branch from the second, once
:math:`W_o \neq 0`; an update moves the output on the scale of the vocabulary the text
encoder was trained on, not on LN's unit scale.

With a single token (n = 1) two branches degenerate: the row softmax is over one key, so
:math:`R = X W_v` (a linear map), and the statistical attention has weight 1 on the token
itself, so :math:`S = \sqrt{\epsilon}` and :math:`T \approx X U_v`. Only the column branch
still mixes anything (channels). Use ``num_tokens >= 2`` with ``ssam``.

``self`` keeps only the row branch (the plain attention the released ArtBank weights used),
and ``none`` is the identity (a multi-vector textual inversion), so the paper's "faster
training" claim can be measured by switching ``bank_attention``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

BankAttention = Literal["ssam", "self", "none"]
_STD_EPS = 1e-5
#: c of :func:`default_attention_lr`: ``lr * c / d``; at the world model's d = 32 this is
#: ``lr / 10``, measured to train the attention stably (README "SSAM's learning rate")
ATTENTION_LR_SCALE = 3.2


def default_attention_lr(lr: float, dim: int) -> float:
    r"""Learning rate of the bank attention's weights for vectors trained at ``lr``.

    Adam moves every weight by about its learning rate :math:`\eta` on the first steps,
    whatever the gradient's scale. A step on :math:`W_o \in \mathbb{R}^{d \times d}` moves
    each output channel by :math:`\rho(P)\,\eta \sum_i |X_i| \approx \rho(P)\,\eta\, d\,
    \mathbb{E}|X|`, a move relative to the token of :math:`\eta\, d\, \mathbb{E}|X|`: it
    grows with the width d (muP's 1/fan-in rule for hidden layers under Adam, Yang et al.
    2022, Table 3). The rate is therefore :math:`\eta_P \cdot c / d`, with c chosen by
    measurement (:data:`ATTENTION_LR_SCALE`).
    """
    return lr * ATTENTION_LR_SCALE / dim


def _normalise_tokens(x: torch.Tensor) -> torch.Tensor:
    """Mean-variance normalise each token over its channels (no affine)."""
    return F.layer_norm(x, x.shape[-1:], eps=_STD_EPS)


class RowAttention(nn.Module):
    """Multi-head self-attention across the n tokens of each prompt matrix."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"bank_heads={num_heads} must divide the embedding size {dim}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, n, d]`` to ``[B, n, d]``."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return out.transpose(1, 2).reshape(b, n, d)


class ColumnAttention(nn.Module):
    """Single-head self-attention across the d channels, each described by its n values."""

    def __init__(self, num_tokens: int, dropout: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(num_tokens, 3 * num_tokens, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, n, d]`` to ``[B, n, d]``."""
        q, k, v = self.qkv(x.transpose(1, 2)).chunk(3, dim=-1)
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2)


class StatisticalAttention(nn.Module):
    """AdaAttN-style attention-weighted mean and std that re-style the normalised tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map layer-normed tokens ``[B, n, d]`` to ``T = S * norm(X) + M``, also ``[B, n, d]``."""
        normed = _normalise_tokens(x)
        scores = self.query(normed) @ self.key(normed).transpose(1, 2)
        weights = torch.softmax(scores / x.shape[-1] ** 0.5, dim=-1)
        values = self.value(x)
        mean = weights @ values
        var = weights @ (values * values) - mean * mean
        std = torch.sqrt(F.relu(var) + _STD_EPS)
        return std * normed + mean


def token_rms(prompts: torch.Tensor) -> torch.Tensor:
    """Per-token RMS over channels, ``[B, n, 1]``, without gradient (a scale, not a path)."""
    return prompts.detach().float().pow(2).mean(dim=-1, keepdim=True).sqrt().to(prompts.dtype)


class SpatialStatisticalSelfAttention(nn.Module):
    """SSAM: row, column and statistical attention over a batch of prompt matrices.

    Starts as the identity (zero-initialised output projection); see the module docstring.

    Args:
        dim: embedding size d of the text encoder.
        num_tokens: tokens n per prompt matrix (with n = 1 the row and statistical
            branches degenerate to linear maps).
        num_heads: heads of the row attention; must divide ``dim``.
        dropout: attention dropout in training.
        branches: ``ssam`` for all three branches, ``self`` for row attention only.
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        num_heads: int = 8,
        dropout: float = 0.0,
        branches: Literal["ssam", "self"] = "ssam",
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.rows = RowAttention(dim, num_heads, dropout)
        full = branches == "ssam"
        self.columns = ColumnAttention(num_tokens, dropout) if full else None
        self.statistics = StatisticalAttention(dim) if full else None
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def branches(self, prompts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return each branch's output ``R``, ``C``, ``T`` on ``X = LN(P)``, ``[B, n, d]``."""
        x = self.norm(prompts)
        out = {"rows": self.rows(x)}
        if self.columns is not None:
            out["columns"] = self.columns(x)
        if self.statistics is not None:
            out["statistics"] = self.statistics(x)
        return out

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        """Reparameterise prompt matrices ``[B, n, d]`` into token embeddings ``[B, n, d]``."""
        mixed = sum(self.branches(prompts).values())
        return prompts + token_rms(prompts) * self.proj(mixed)


def build_bank_attention(
    kind: BankAttention,
    dim: int,
    num_tokens: int,
    num_heads: int = 8,
    dropout: float = 0.0,
) -> nn.Module:
    """Build the module that reparameterises the prompt bank.

    Args:
        kind: ``ssam`` (full SSAM), ``self`` (row self-attention only) or ``none`` (identity).
        dim: embedding size of the text encoder.
        num_tokens: tokens per collection.
        num_heads: row-attention heads.
        dropout: attention dropout.

    Raises:
        ValueError: ``kind`` is not one of the three.
    """
    if kind == "none":
        return nn.Identity()
    if kind not in ("ssam", "self"):
        raise ValueError(f"bank_attention must be ssam, self or none, got {kind!r}")
    return SpatialStatisticalSelfAttention(dim, num_tokens, num_heads, dropout, branches=kind)
