"""A GPT-style decoder with DALL-E's sparse attention masks (paper appendix B.1, Fig. 11).

The sequence is [T text tokens | N = G*G image tokens in raster order]. Input position T + q
holds image token z_q (grid cell q) and its output predicts the next cell, p = q + 1; the last
text position predicts cell 0. In every layer text attends causally to earlier text, and each
image token attends to all text tokens; among image tokens, each layer uses one of three
causal masks. As in the paper they are laid out on the *input* cell q:

    row     (Fig. 11a): q and the G cells before it in raster order, so the earliest is the cell
                        above q; the predicted cell's upper neighbour, p - G, is always among them;
    column  (Fig. 11b): q and the cells above q in q's column. That is the column to the LEFT of
                        the predicted cell p (for p in column 0, the last column one row up), so a
                        column layer never reads the cell directly above p: the Sparse
                        Transformer's strided convention, which the paper keeps. (Fig. 11c is the
                        same mask on transposed image states, a GPU trick we need not copy.)
    conv    (Fig. 11d): q and the earlier cells q + dr*G + dc for |dr|, |dc| <= conv_kernel // 2,
                        counted in raster order, so a window running off the left or right edge
                        wraps to the neighbouring row, "like the row attention". The cell above p
                        is q - G + 1, always inside.

(Laying column and conv masks on the predicted cell instead made no measurable difference:
docs/experiments.md.)

Layer i (1-based) uses column attention if (i - 2) mod 4 == 0, row attention otherwise, and
the last layer convolutional attention, as in the paper. The masks are built once as boolean
tensors and sliced to the positions at hand. To train on a CPU, attention is written out
(scores, mask, softmax in float32, weighted sum: `attend`): for these short masked sequences
that is faster than F.scaled_dot_product_attention's fused CPU kernel, whose backward pass was
57% of a training step (docs/engineering.md); sampling in float32 and CUDA use the fused kernel.
Dropout acts on the residual branches only, not on the attention weights: drawing a random mask
over every (query, key) pair cost a fifth of each step.
A KV cache makes sampling cost one position's work per token, and in row and column layers a
new token reads only the few cached keys its mask allows.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from config import DallEConfig

MASK_KINDS = ("row", "column", "conv")


def layer_mask_kinds(n_layer):
    """The mask each layer uses (appendix B.1): column if (i - 2) % 4 == 0, else row; last conv."""
    kinds = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, n_layer)]
    return kinds + ["conv"]


def image_mask(kind, grid_size, conv_kernel):
    """(N, N) bool, query by key: which image cells the query at input cell q may read (see top)."""
    q = torch.arange(grid_size * grid_size)[:, None]  # (N, 1) the input cell of each query
    k = torch.arange(grid_size * grid_size)[None, :]  # (1, N) the cell of each key
    causal = k <= q
    if kind == "row":
        return causal & (q - k <= grid_size)
    if kind == "column":
        return causal & ((q - k) % grid_size == 0)
    if kind == "conv":
        half = conv_kernel // 2
        offsets = torch.tensor([dr * grid_size + dc for dr in range(-half, 1) for dc in range(-half, half + 1)])
        return causal & torch.isin(k - q, offsets)  # raster offsets wrap at the grid's edges
    raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")


def attention_mask(kind, text_length, grid_size, conv_kernel):
    """(T + N, T + N) bool, True where a query (row) may attend to a key (column)."""
    n = grid_size * grid_size
    mask = torch.zeros(text_length + n, text_length + n, dtype=torch.bool)
    mask[:text_length, :text_length] = torch.ones(text_length, text_length, dtype=torch.bool).tril()
    mask[text_length:, :text_length] = True  # image tokens see the whole prompt
    mask[text_length:, text_length:] = image_mask(kind, grid_size, conv_kernel)
    return mask


def mask_density(kind, grid_size, conv_kernel):
    """Share of the causal image-to-image pairs that a mask keeps."""
    n = grid_size * grid_size
    return image_mask(kind, grid_size, conv_kernel).sum().item() / (n * (n + 1) // 2)


class KVCache:
    """Keys and values of every layer for positions already processed: (layers, B, nh, L, hs)."""

    def __init__(self, n_layer, batch, n_head, max_length, head_size, device, dtype):
        shape = (n_layer, batch, n_head, max_length, head_size)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)

    def update(self, layer, start, k, v):
        """Store k, v (B, nh, T, hs) at positions start.., return all keys and values so far."""
        end = start + k.shape[2]
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]  # (B, nh, end, hs)


def attend(q, k, v, mask, dropout=0.0):
    """softmax(q k^T / sqrt(hs), masked) v: (B, nh, T, hs) queries over (B, nh, L, hs) keys -> (B, nh, T, hs).

    The fused F.scaled_dot_product_attention on CUDA, and on a CPU for float32 sampling, where it is
    the faster; written out for CPU training (the fused kernel's backward is slow on these short masked
    sequences) and under bf16 autocast (where the written-out matmuls are faster).
    """
    if q.device.type == "cuda" or (q.dtype == torch.float32 and not torch.is_grad_enabled()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, nh, T, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.float().softmax(dim=-1).to(v.dtype)  # softmax in float32, also under bf16 autocast
    return F.dropout(weights, dropout, training=dropout > 0) @ v


class SelfAttention(nn.Module):
    def __init__(self, c: DallEConfig):
        super().__init__()
        self.n_head = c.n_head
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.proj = nn.Linear(c.n_embd, c.n_embd)
        self.dropout = nn.Dropout(c.dropout)
        self.attention_dropout = c.attention_dropout

    def forward(self, x, mask, cache=None, layer=0, start=0, keys=None):
        q, k, v = rearrange(
            self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_head
        )  # 3 x (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(layer, start, k, v)  # (B, nh, start + T, hs)
        if keys is not None:  # one new token under a sparse mask: read only the keys it allows
            k, v, mask = k.index_select(2, keys), v.index_select(2, keys), None  # (B, nh, A, hs)
        dropout = self.attention_dropout if self.training else 0.0
        y = rearrange(attend(q, k, v, mask, dropout), "b h t d -> b t (h d)")  # (B, T, D): the heads side by side again
        return self.dropout(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, c: DallEConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd)
        self.attn = SelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd), nn.Dropout(c.dropout)
        )

    def forward(self, x, mask, cache=None, layer=0, start=0, keys=None):
        x = x + self.attn(self.ln_1(x), mask, cache, layer, start, keys)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Embedded tokens (B, T, D) at positions start.. -> hidden states (B, T, D)."""

    def __init__(self, c: DallEConfig, grid_size):
        super().__init__()
        self.config = c
        self.text_position = nn.Parameter(torch.randn(c.text_length, c.n_embd) * 0.02)  # learned, per text slot
        self.row_position = nn.Parameter(torch.randn(grid_size, c.n_embd) * 0.02)  # image: row + column
        self.column_position = nn.Parameter(torch.randn(grid_size, c.n_embd) * 0.02)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        masks = [attention_mask(kind, c.text_length, grid_size, c.conv_kernel) for kind in MASK_KINDS]
        masks = torch.stack(masks)
        self.register_buffer("masks", masks, persistent=False)  # (3, L, L)
        self.layer_mask = [MASK_KINDS.index(kind) for kind in layer_mask_kinds(c.n_layer)]  # index into MASK_KINDS
        # Sampling shortcut: for a token at position p, the keys the row or column mask allows,
        # a few of up to p + 1; reading only those makes those layers' cached attention cheaper.
        self.sparse_keys = {
            MASK_KINDS.index(kind): [row.nonzero().squeeze(1) for row in masks[MASK_KINDS.index(kind)]]
            for kind in ("row", "column")
        }

    @property
    def max_length(self):
        return self.masks.shape[-1]

    def position_embeddings(self):
        """(L, D): text slots, then row + column embeddings in raster order."""
        image = rearrange(
            self.row_position[:, None] + self.column_position[None, :], "r c d -> (r c) d"
        )  # (N, D) raster order
        return torch.cat([self.text_position, image])

    def forward(self, x, start=0, cache=None):
        T = x.shape[1]
        x = x + self.position_embeddings()[start : start + T]
        for layer, block in enumerate(self.blocks):
            mask_index = self.layer_mask[layer]
            mask = self.masks[mask_index, start : start + T, : start + T]  # (T, start + T)
            sparse = cache is not None and T == 1 and mask_index in self.sparse_keys
            keys = self.sparse_keys[mask_index][start].to(x.device) if sparse else None  # (A,) or None
            x = block(x, mask, cache, layer, start, keys)
        return self.ln_f(x)

    def new_cache(self, batch, device, dtype):
        c = self.config
        return KVCache(c.n_layer, batch, c.n_head, self.max_length, c.n_embd // c.n_head, device, dtype)
