"""Building blocks shared by the LSTM students: word embeddings, a padding-safe LSTM call and
masked pooling. Padding id is 0 everywhere."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def _as_matrix(pretrained, vocab_size: int, embed_dim: int) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(pretrained) if not torch.is_tensor(pretrained) else pretrained)
    m = m.detach().to(torch.float32).clone()
    if m.dim() != 2 or m.shape[0] != vocab_size or m.shape[1] != embed_dim:
        raise ValueError(f"pretrained embeddings have shape {tuple(m.shape)}; the student expects "
                         f"(vocab_size={vocab_size}, embed_dim={embed_dim})")
    return m


class WordEmbedding(nn.Module):
    """Word vectors, from a ``pretrained`` matrix (numpy or torch, ``[vocab, dim]``) or random.

    ``channels="single"``: one table, trainable when ``trainable``.
    ``channels="multi"`` (Tang et al. / Kim 2014): a frozen static copy and a trainable copy, both
    initialised from the same matrix and concatenated, so ``out_dim = 2 * embed_dim``; the
    ``trainable`` flag does not apply to the second copy, which is always trained.
    """

    def __init__(self, vocab_size: int, embed_dim: int, pretrained=None, trainable: bool = True,
                 channels: str = "single"):
        super().__init__()
        if channels not in ("single", "multi"):
            raise ValueError(f"channels={channels!r}: choose single or multi")
        if pretrained is not None:
            weight = _as_matrix(pretrained, vocab_size, embed_dim)
        else:
            weight = torch.randn(vocab_size, embed_dim) * 0.1
            weight[0] = 0.0  # padding
        self.channels = channels
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.embed.weight.data.copy_(weight)
        if channels == "multi":
            self.static = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
            self.static.weight.data.copy_(weight)
            self.static.weight.requires_grad_(False)
        else:
            self.static = None
            self.embed.weight.requires_grad_(trainable)
        self.out_dim = embed_dim * (2 if channels == "multi" else 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        if self.static is not None:
            x = torch.cat([self.static(ids), x], dim=-1)
        return x


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor):
    """Run a batch-first ``lstm`` over ``x [B, T, D]`` with packed sequences so padding never
    enters the recurrence. Returns ``(outputs [B, T, dirs*H], h_n [layers*dirs, B, H])``; outputs
    are zero at padded positions. Rows of length 0 are run on one step and must be masked by
    the caller (see :func:`zero_empty`)."""
    packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                  enforce_sorted=False)
    out, (h_n, _) = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    return out, h_n


def zero_empty(v: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero the rows of ``v [B, ...]`` whose sequence is all padding."""
    keep = (lengths > 0).to(v.dtype)
    return v * keep.view(-1, *([1] * (v.dim() - 1)))


def pad_to(ids: torch.Tensor, length: int) -> torch.Tensor:
    """Right-pad ``ids [B, T]`` with zeros to ``length`` columns."""
    return F.pad(ids, (0, length - ids.size(1))) if ids.size(1) < length else ids


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` ignoring positions where ``mask`` is False. A slice with no valid
    position gives all zeros (never NaN)."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=dim) * mask.to(scores.dtype)


def masked_pool(x: torch.Tensor, mask: torch.Tensor, kind: str,
                attn: nn.Module | None = None) -> torch.Tensor:
    """Pool ``x [B, T, D]`` over valid time steps (``mask [B, T]``): max | mean | min | self
    (self-attentive: softmax of ``attn(x)`` over time). All-padding rows pool to zeros."""
    m = mask.unsqueeze(-1)
    any_valid = mask.any(dim=1, keepdim=True).to(x.dtype)
    if kind == "max":
        return x.masked_fill(~m, torch.finfo(x.dtype).min).amax(dim=1) * any_valid
    if kind == "min":
        return x.masked_fill(~m, torch.finfo(x.dtype).max).amin(dim=1) * any_valid
    if kind == "mean":
        n = mask.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)
        return (x * m.to(x.dtype)).sum(dim=1) / n
    if kind == "self":
        if attn is None:
            raise ValueError("self-attentive pooling needs a scoring layer")
        w = masked_softmax(attn(x).squeeze(-1), mask, dim=1)
        return torch.bmm(w.unsqueeze(1), x).squeeze(1)
    raise ValueError(f"pooling {kind!r}: choose max, mean, min or self")
