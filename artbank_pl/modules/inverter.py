r"""InST's attention-based inverter: CLIP image features to pseudo-word embeddings.

Zhang et al. (CVPR 2023, Sec. 3.2) map the image embedding :math:`\tau(y)` through
multi-layer cross-attention, :math:`v_{i+1} = \mathrm{Attention}(W_Q^{(i)} v_i,
W_K^{(i)} \tau(y), W_V^{(i)} \tau(y))`, with dropout 0.05. The official code feeds one
pooled embedding, so every softmax is over a single key and the module collapses to a
linear map. Here ``n`` learned queries :math:`v_0` attend over the CLIP patch tokens
(``image_features: patch``); ``pooled`` keeps the paper's single-embedding input. With
``image_queries`` the queries start as the paper's do, from the image embedding
(:math:`v_0 = \tau(y)`, through a linear map to the layers' width, plus a learned offset
per token). Each layer is pre-norm cross-attention followed by an MLP, both residual
(Vaswani et al. 2017); the output is projected to the text encoder's width by a
zero-initialised projection and added to a base embedding (started from a word embedding),
so the inverter's output for any image is exactly that word at the start of training; the
projection gets a gradient from the first step and the attention layers from the second.
The base is a free word the inverter trains (textual inversion inside the inverter) unless
``learned_base`` is off: then it stays the word it started as, and only the image moves
the output.
"""

from __future__ import annotations

import torch
from torch import nn


class CrossAttentionLayer(nn.Module):
    """Pre-norm cross-attention from queries to image tokens, then an MLP, both residual."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Update ``[B, n, dim]`` queries from ``[B, S, dim]`` context tokens."""
        kv = self.norm_kv(context)
        attended, _ = self.attention(self.norm_q(queries), kv, kv, need_weights=False)
        queries = queries + self.dropout(attended)
        return queries + self.dropout(self.mlp(self.norm_mlp(queries)))


class AttentionInverter(nn.Module):
    """Map CLIP image features ``[B, S, feature_dim]`` to ``[B, n, embed_dim]`` token embeddings.

    Args:
        feature_dim: width of the CLIP features (hidden size for patches, projection size
            for the pooled embedding).
        embed_dim: the text encoder's token-embedding width.
        num_tokens: n, token embeddings produced.
        hidden_dim: width of the attention layers.
        num_layers: cross-attention layers.
        num_heads: attention heads (must divide ``hidden_dim``).
        dropout: dropout in attention and MLP (0.05 in the paper).
        image_queries: start the queries from the image embedding (``embedding_dim`` wide)
            instead of from learned vectors alone.
        embedding_dim: width of the image embedding the queries start from.
        learned_base: train the base embedding (a free word); off, it is a constant.
    """

    def __init__(
        self,
        feature_dim: int,
        embed_dim: int,
        num_tokens: int = 1,
        hidden_dim: int = 768,
        num_layers: int = 2,
        num_heads: int = 8,
        dropout: float = 0.05,
        image_queries: bool = False,
        embedding_dim: int | None = None,
        learned_base: bool = True,
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"inverter_heads={num_heads} must divide hidden_dim={hidden_dim}")
        self.input = nn.Linear(feature_dim, hidden_dim)
        self.queries = nn.Parameter(torch.randn(num_tokens, hidden_dim) * 0.02)
        self.layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.output = nn.Linear(hidden_dim, embed_dim)
        base = torch.zeros(num_tokens, embed_dim)
        if learned_base:
            self.base = nn.Parameter(base)
        else:
            self.register_buffer("base", base)
        self.query_input = (
            nn.Linear(embedding_dim or feature_dim, hidden_dim) if image_queries else None
        )
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    @property
    def num_tokens(self) -> int:
        """N, token embeddings per image."""
        return self.queries.shape[0]

    @torch.no_grad()
    def init_base(self, embedding: torch.Tensor) -> None:
        """Start every output token at a word embedding ``[embed_dim]``."""
        self.base.copy_(embedding.to(self.base.dtype).expand_as(self.base))

    def forward(
        self, features: torch.Tensor, embedding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Map image features ``[B, S, feature_dim]`` to token embeddings ``[B, n, embed_dim]``.

        Args:
            features: the attention's context (CLIP patch tokens or the pooled embedding).
            embedding: the image embedding ``[B, embedding_dim]`` the queries start from
                (with ``image_queries``; the pooled features' own by default).
        """
        context = self.input(features.to(self.input.weight.dtype))
        queries = self.queries.expand(features.shape[0], -1, -1)
        if self.query_input is not None:
            start = features[:, 0] if embedding is None else embedding
            queries = queries + self.query_input(start.to(self.input.weight.dtype))[:, None]
        for layer in self.layers:
            queries = layer(queries, context)
        return self.base + self.output(self.norm(queries))
