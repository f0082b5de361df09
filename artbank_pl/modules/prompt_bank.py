"""The Implicit Style Prompt Bank (ISPB) of ArtBank: one trainable matrix per collection."""

from __future__ import annotations

import torch
from torch import nn

from artbank_pl.modules.ssam import BankAttention, build_bank_attention


class ImplicitStylePromptBank(nn.Module):
    """K trainable prompt matrices of n tokens x d channels, read out through SSAM.

    Args:
        num_collections: K, one matrix per artwork collection.
        num_tokens: n, token vectors per collection.
        dim: d, the text encoder's embedding size.
        attention: ``ssam``, ``self`` or ``none`` (see :mod:`artbank_pl.modules.ssam`).
        num_heads: row-attention heads.
        dropout: attention dropout in training.
    """

    def __init__(
        self,
        num_collections: int,
        num_tokens: int,
        dim: int,
        attention: BankAttention = "ssam",
        num_heads: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_collections < 1 or num_tokens < 1:
            raise ValueError(
                f"need at least one collection and one token, got {num_collections}, {num_tokens}"
            )
        self.prompts = nn.Parameter(torch.randn(num_collections, num_tokens, dim) * 0.02)
        self.attention = build_bank_attention(attention, dim, num_tokens, num_heads, dropout)

    @property
    def num_collections(self) -> int:
        """K, the number of collections."""
        return self.prompts.shape[0]

    @property
    def num_tokens(self) -> int:
        """N, the tokens per collection."""
        return self.prompts.shape[1]

    def init_from_embedding(self, embedding: torch.Tensor) -> None:
        """Start every token of every collection at one word embedding ``[d]``.

        No noise is added (as diffusers' textual inversion does): the tokens sit at
        different prompt positions, so their gradients differ from the first step.
        """
        self.init_from_tables(embedding.expand_as(self.prompts))

    @torch.no_grad()
    def init_from_tables(self, tables: torch.Tensor) -> None:
        """Start each collection at given token embeddings ``[K, n, d]``.

        Every bank mode starts at the identity (SSAM's and self-attention's output
        projections are zero-initialised), so the bank's first output is ``tables`` itself.
        """
        self.prompts.copy_(tables.to(self.prompts.dtype))

    def forward(self, collection_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Return the token embeddings ``[B, n, d]`` of collection indices ``[B]`` (all: ``K``).

        Every collection is computed once per call (SSAM attends within a collection, so
        this equals computing the batch's own collections, and needs no ``unique``, which
        would make the host wait for the GPU); a sample's embeddings thus do not depend on
        which other samples share its batch.
        """
        table = self.attention(self.prompts)
        return table if collection_idx is None else table[collection_idx]

    def embeddings(self) -> torch.Tensor:
        """Return every collection's token embeddings, ``[K, n, d]``."""
        return self()
