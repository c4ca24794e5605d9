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
    the caller (see :func:`zero_empty`).

    An LSTM flagged by :func:`set_export_mode` runs :func:`run_lstm_unpacked` instead (same
    results; for TorchScript/ONNX export, which cannot trace packed sequences)."""
    if getattr(lstm, "export_mode", False):
        return run_lstm_unpacked(lstm, x, lengths)
    packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                  enforce_sorted=False)
    out, (h_n, _) = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    return out, h_n


def set_export_mode(model: nn.Module, on: bool = True) -> nn.Module:
    """Make every ``nn.LSTM`` in ``model`` run :func:`run_lstm_unpacked` (``on``) or the packed
    path (``off``, the default used in training). Returns ``model``."""
    for m in model.modules():
        if isinstance(m, nn.LSTM):
            m.export_mode = on
    return model


def _time_gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, t]]`` for ``x [B, T, D]``, ``index [B, T']``."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))


def run_lstm_unpacked(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor):
    """:func:`run_lstm` without ``PackedSequence``, for export (eval only).

    Right padding never reaches a valid step of the forward direction, which reads left to right,
    so the padded batch is run as is and each row's final state is read at its last valid step.
    The backward direction reads each row's valid prefix reversed in place (padding stays at the
    end), with the same weights, and its outputs are reversed back. Layer by layer, with padded
    outputs zeroed, as the packed path gives them."""
    if lstm.training and lstm.dropout > 0 and lstm.num_layers > 1:
        raise RuntimeError("run_lstm_unpacked is for inference: call model.eval() first")
    if not lstm.batch_first or getattr(lstm, "proj_size", 0):
        raise ValueError("run_lstm_unpacked supports batch_first LSTMs without projections")
    steps = torch.arange(x.size(1), device=x.device).unsqueeze(0)  # [1, T]
    n = lengths.clamp(min=1).to(steps.dtype).unsqueeze(1)  # [B, 1]; empty rows run one step
    valid = steps < n
    reverse = torch.where(valid, n - 1 - steps, steps)  # flips each valid prefix; an involution
    last = n - 1
    h = x.new_zeros((1, x.size(0), lstm.hidden_size))
    directions = ("", "_reverse") if lstm.bidirectional else ("",)
    finals = []
    inp = x
    for layer in range(lstm.num_layers):
        outs = []
        for suffix in directions:
            weights = [getattr(lstm, f"{w}_l{layer}{suffix}")
                       for w in (("weight_ih", "weight_hh", "bias_ih", "bias_hh") if lstm.bias
                                 else ("weight_ih", "weight_hh"))]
            z = _time_gather(inp, reverse) if suffix else inp
            out = torch.lstm(z, (h, h), weights, lstm.bias, 1, 0.0, False, False, True)[0]
            finals.append(_time_gather(out, last).squeeze(1))
            outs.append(_time_gather(out, reverse) if suffix else out)
        inp = torch.cat(outs, dim=-1) * valid.unsqueeze(-1).to(x.dtype)
    return inp, torch.stack(finals)


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
