"""Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks".

single sentence:  words -> embeddings -> BiLSTM -> h = [last forward state; last backward state]
                  -> ReLU layer -> classifier (one per task)
sentence pair:    the same BiLSTM encodes both sides -> [h1, h2, h1*h2, |h1-h2|] -> ReLU -> classifier

The "last backward state" is the backward LSTM's state after reading the whole sentence (at
position 0). Sequences are packed, so padding never reaches the recurrence.
"""
from __future__ import annotations

import torch
from torch import nn

from students.heads import Student, TaskHeads, lengths_of
from students.layers import WordEmbedding, pad_to, run_lstm, zero_empty


class BiLSTMStudent(Student):
    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int,
                 relu_size: int, heads: dict[str, int], dropout: float = 0.1, pair: bool = False,
                 pretrained=None, trainable_embeddings: bool = True, channels: str = "single"):
        super().__init__()
        self.pair = pair
        self.embedding = WordEmbedding(vocab_size, embed_dim, pretrained, trainable_embeddings,
                                       channels)
        self.lstm = nn.LSTM(self.embedding.out_dim, hidden_size, num_layers=num_layers,
                            batch_first=True, bidirectional=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        sent_dim = 2 * hidden_size
        feat_dim = 4 * sent_dim if pair else sent_dim
        self.dropout = nn.Dropout(dropout)
        self.relu = nn.Sequential(nn.Linear(feat_dim, relu_size), nn.ReLU())
        self.heads = TaskHeads(relu_size, heads, hidden=None, dropout=dropout)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Sentence vectors ``[B, 2H]``: last forward and last backward hidden state of the top
        layer. All-padding rows give zeros."""
        lengths = lengths_of(ids)
        x = self.dropout(self.embedding(ids))
        _, h_n = run_lstm(self.lstm, x, lengths)
        h = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # top layer: forward, backward
        return zero_empty(h, lengths)

    def forward(self, ids_a: torch.Tensor, ids_b: torch.Tensor | None = None,
                task: str | None = None) -> torch.Tensor:
        if self.pair != (ids_b is not None):
            raise ValueError("this BiLSTM student was built for "
                             f"{'sentence pairs' if self.pair else 'single sentences'}; "
                             f"got {'two inputs' if ids_b is not None else 'one input'}")
        if ids_b is None:
            feat = self.encode(ids_a)
        else:  # one LSTM call for both sides
            t = max(ids_a.size(1), ids_b.size(1))
            h = self.encode(torch.cat([pad_to(ids_a, t), pad_to(ids_b, t)], dim=0))
            n = ids_a.size(0)
            h1, h2 = h[:n], h[n:]  # slices, not split(): they stay dynamic when exported
            feat = torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()], dim=-1)
        return self.heads(self.relu(self.dropout(feat)), task)
