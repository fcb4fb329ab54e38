"""A small decoder-only transformer classifier in the style of GPT-2 (Radford et al. 2019) / nanoGPT.

Token embedding plus learned positional embedding, `n_layer` pre-LayerNorm blocks (causal
`nn.MultiheadAttention`, then a GELU MLP of width `mlp_ratio * d_model`, each with a residual), a final
LayerNorm, and a linear head on the **last** position (as for the `=` token of modular arithmetic,
Nanda et al. 2023). Attention uses `nn.MultiheadAttention` so its packed `in_proj_weight` is a real
parameter that sparsifiers can mask. Linear and embedding weights start from N(0, 0.02) as in GPT-2.

Inputs:
- tokens (`vocab_size` given, input_shape (T,)): int64 ids;
- real-valued (C, L): L positions with C features each, projected by a Linear(C, d_model);
- real-valued (C, H, W): H*W pixel positions with C features each;
- real-valued (L,): L positions with one scalar each.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsetrain.models.registry import register_model


class Block(nn.Module):
    """x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=causal_mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only transformer that classifies a sequence from its last position."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        vocab_size: int | None = None,
        n_layer: int = 2,
        n_head: int = 4,
        d_model: int = 128,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            input_shape: (T,) for tokens; (L,), (C, L) or (C, H, W) for real values.
            num_classes: number of logits.
            vocab_size: number of token ids, or None for real-valued inputs.
            n_layer: number of transformer blocks.
            n_head: attention heads; must divide `d_model`.
            d_model: residual stream width.
            mlp_ratio: MLP hidden width as a multiple of `d_model`.
            dropout: dropout probability in attention and after the MLP.

        Raises:
            ValueError: invalid sizes or an input shape with more than three entries.
        """
        super().__init__()
        for name, value in (("n_layer", n_layer), ("n_head", n_head), ("d_model", d_model), ("mlp_ratio", mlp_ratio)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if len(input_shape) > 3:
            raise ValueError(f"model 'gpt' takes inputs (T,), (C, L) or (C, H, W), got {input_shape}")

        self.tokens = vocab_size is not None
        if vocab_size is not None:
            seq_len, features = input_shape[0], 0
            self.embed: nn.Module = nn.Embedding(vocab_size, d_model)
        else:
            features = 1 if len(input_shape) == 1 else input_shape[0]
            seq_len = input_shape[0] if len(input_shape) == 1 else math.prod(input_shape[1:])
            self.embed = nn.Linear(features, d_model)
        self.features = features
        self.pos_embed = nn.Embedding(seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_head, mlp_ratio, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)
        # True above the diagonal: position i may not attend to j > i.
        mask = torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", mask, persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            h = self.embed(x)
        else:
            # (B, L) -> (B, L, 1); (B, C, L) or (B, C, H, W) -> (B, positions, C).
            h = x.unsqueeze(-1) if x.dim() == 2 else x.flatten(2).transpose(1, 2)
            h = self.embed(h)
        positions = torch.arange(h.shape[1], device=h.device)
        h = self.drop(h + self.pos_embed(positions))
        for block in self.blocks:
            h = block(h, self.causal_mask)
        return self.head(self.ln_f(h[:, -1]))


@register_model("gpt")
def build_gpt(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int | None,
    n_layer: int = 2,
    n_head: int = 4,
    d_model: int = 128,
    mlp_ratio: int = 4,
    dropout: float = 0.0,
) -> nn.Module:
    """A small GPT-style classifier for tokens (give vocab_size) or real-valued sequences and images.

    Args:
        n_layer: transformer blocks (default 2).
        n_head: attention heads (default 4).
        d_model: width (default 128).
        mlp_ratio: MLP width multiple (default 4).
        dropout: dropout probability (default 0).
    """
    return GPT(input_shape, num_classes, vocab_size, n_layer, n_head, d_model, mlp_ratio, dropout)
