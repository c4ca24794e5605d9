"""The biattentive classification network (McCann et al. 2017) as MKD (Liu et al. 2019) uses it.

    w_x, w_y   word embeddings of the two inputs (a single sentence attends to itself: y = x)
    X = BiLSTM_enc(ReLU(W w_x + b)),  Y likewise, same layers
    A = X Y^T                                      [Tx, Ty], padding masked
    C_y = softmax_rows(A) Y,  C_x = softmax_rows(A^T) X
    X_y = BiLSTM_int([X; X - C_y; X * C_y]),  Y_x = BiLSTM_int([Y; Y - C_x; Y * C_x])
    x = [pool(X_y) for pool in pooling],  y likewise   (max, mean, min, self-attentive; masked)
    logits = head_task([x; y])

Everything but the heads is shared across tasks. For a single sentence the two sides are equal,
so the model computes one side and uses it twice (same result as ``ids_b = ids_a``, half the work).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from students.heads import Student, TaskHeads, lengths_of
from students.layers import WordEmbedding, masked_pool, masked_softmax, pad_to, run_lstm

POOLINGS = ("max", "mean", "min", "self")


class BCNStudent(Student):
    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, heads: dict[str, int],
                 dropout: float = 0.1, pretrained=None, trainable_embeddings: bool = True,
                 pooling: Sequence[str] = POOLINGS):
        super().__init__()
        self.pooling = tuple(pooling)
        bad = [p for p in self.pooling if p not in POOLINGS]
        if not self.pooling or bad or len(set(self.pooling)) != len(self.pooling):
            raise ValueError(f"pooling={list(pooling)!r}: choose a non-empty list of distinct "
                             f"{', '.join(POOLINGS)}")
        h = hidden_size
        self.embedding = WordEmbedding(vocab_size, embed_dim, pretrained, trainable_embeddings)
        self.dropout = nn.Dropout(dropout)
        self.pre_encode = nn.Sequential(nn.Linear(self.embedding.out_dim, h), nn.ReLU())
        self.encoder = nn.LSTM(h, h, batch_first=True, bidirectional=True)
        self.integrator = nn.LSTM(3 * 2 * h, h, batch_first=True, bidirectional=True)
        self.self_attn = nn.Linear(2 * h, 1) if "self" in self.pooling else None
        feat_dim = 2 * len(self.pooling) * 2 * h  # both sides, each pooled k ways over 2h
        self.heads = TaskHeads(feat_dim, heads, hidden=h, dropout=dropout)

    def _encode(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.pre_encode(self.dropout(self.embedding(ids)))
        out, _ = run_lstm(self.encoder, x, lengths_of(ids))
        return out

    def _integrate_and_pool(self, x: torch.Tensor, context: torch.Tensor,
                            mask: torch.Tensor) -> torch.Tensor:
        z = self.dropout(torch.cat([x, x - context, x * context], dim=-1))
        out, _ = run_lstm(self.integrator, z, mask.sum(dim=1))
        out = self.dropout(out)
        return torch.cat([masked_pool(out, mask, p, self.self_attn) for p in self.pooling], dim=-1)

    def forward(self, ids_a: torch.Tensor, ids_b: torch.Tensor | None = None,
                task: str | None = None) -> torch.Tensor:
        mask_a = ids_a != 0
        if ids_b is None:
            x = self._encode(ids_a)
            a = torch.bmm(x, x.transpose(1, 2))
            c = torch.bmm(masked_softmax(a, mask_a.unsqueeze(1)), x)
            px = self._integrate_and_pool(x, c, mask_a)
            feat = torch.cat([px, px], dim=-1)
        else:
            mask_b = ids_b != 0
            ta, tb = ids_a.size(1), ids_b.size(1)
            t = max(ta, tb)
            ids = torch.cat([pad_to(ids_a, t), pad_to(ids_b, t)], dim=0)
            xy = self._encode(ids)
            x, y = xy[: ids_a.size(0), :ta], xy[ids_a.size(0):, :tb]
            a = torch.bmm(x, y.transpose(1, 2))  # [B, Ta, Tb]
            c_y = torch.bmm(masked_softmax(a, mask_b.unsqueeze(1)), y)  # context for x
            c_x = torch.bmm(masked_softmax(a.transpose(1, 2), mask_a.unsqueeze(1)), x)
            p = self._integrate_and_pool(torch.cat([pad_to_time(x, t), pad_to_time(y, t)]),
                                         torch.cat([pad_to_time(c_y, t), pad_to_time(c_x, t)]),
                                         ids != 0)
            px, py = p[: ids_a.size(0)], p[ids_a.size(0):]  # slices stay dynamic in export
            feat = torch.cat([px, py], dim=-1)
        return self.heads(feat, task)


def pad_to_time(x: torch.Tensor, length: int) -> torch.Tensor:
    """Right-pad ``x [B, T, D]`` with zeros to ``length`` time steps."""
    return torch.nn.functional.pad(x, (0, 0, 0, length - x.size(1))) if x.size(1) < length else x
