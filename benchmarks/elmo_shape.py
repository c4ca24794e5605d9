"""An ELMo-shaped classifier for the size and latency benchmark (random weights: it is never
trained; latency and parameter counts do not depend on the weights).

The shape is ELMo's "original" model (Peters et al. 2018; the 5.5B/original options of
allennlp's ``Elmo``), whose published size is 93.6M parameters:

    characters (50 per word, ids < 262) -> 16-d char embeddings
    -> char CNN: filters [[1,32],[2,32],[3,64],[4,128],[5,256],[6,512],[7,1024]] (2048 in all),
       max over the word's characters, ReLU
    -> 2 highway layers (2048) -> linear projection to 512: the context-free token vector
    -> forward and backward LMs, each 2 LSTM layers of 4096 cells projected to 512 (torch's
       ``proj_size``), the second layer's output plus its input (ELMo's residual connection)
    -> task head: softmax-weighted scalar mix of the 3 layers ([token; token], layer 1, layer 2,
       each 1024-d) times gamma, mean over the tokens, linear classifier

Differences from ELMo, none of which changes the timing measurably: torch's LSTM has two bias
vectors per cell where ELMo's has one (65,536 more parameters over the 4 cells), and ELMo clips
cell and projected states to +-3 (no clipping here). The word-level softmax of ELMo's language
model is not part of ELMo's 93.6M either.
"""
from __future__ import annotations

import torch
from torch import nn

N_CHARS, CHAR_DIM, CHARS_PER_WORD = 262, 16, 50
FILTERS = ((1, 32), (2, 32), (3, 64), (4, 128), (5, 256), (6, 512), (7, 1024))
HIGHWAY_LAYERS, PROJ_DIM, CELLS, LSTM_LAYERS = 2, 512, 4096, 2
PUBLISHED_TOTAL = 93_600_000  # ELMo's parameters as its authors' and Tang et al.'s tables give them


class Highway(nn.Module):
    """``x <- g * x + (1 - g) * relu(f(x))`` per layer, ``f`` and ``g`` from one linear map
    (allennlp's ``Highway``, which ELMo's character encoder uses)."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, 2 * dim) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            nonlinear, gate = layer(x).chunk(2, dim=-1)
            g = torch.sigmoid(gate)
            x = g * x + (1 - g) * torch.relu(nonlinear)
        return x


class CharCNNEncoder(nn.Module):
    """Context-free token vectors ``[B, T, proj]`` from character ids ``[B, T, chars]``."""

    def __init__(self, n_chars: int = N_CHARS, char_dim: int = CHAR_DIM,
                 filters=FILTERS, highway_layers: int = HIGHWAY_LAYERS, proj: int = PROJ_DIM):
        super().__init__()
        self.char_embedding = nn.Embedding(n_chars, char_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(char_dim, n, kernel_size=w) for w, n in filters)
        width = sum(n for _, n in filters)
        self.highway = Highway(width, highway_layers)
        self.projection = nn.Linear(width, proj)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        b, t, c = chars.shape
        x = self.char_embedding(chars.reshape(b * t, c)).transpose(1, 2)  # [BT, char_dim, c]
        x = torch.cat([torch.relu(conv(x).max(dim=-1).values) for conv in self.convs], dim=-1)
        return self.projection(self.highway(x)).reshape(b, t, -1)


class ElmoShaped(nn.Module):
    """ELMo's encoder (character CNN + two 2-layer LMs) and a scalar-mix, mean-pool classifier.

    ``forward(chars)`` takes character ids ``[B, T, chars_per_word]`` (every word padded to the
    same number of characters, as ELMo pads to 50) and returns logits ``[B, num_labels]``.
    """

    def __init__(self, num_labels: int = 2, n_chars: int = N_CHARS, char_dim: int = CHAR_DIM,
                 filters=FILTERS, highway_layers: int = HIGHWAY_LAYERS, proj: int = PROJ_DIM,
                 cells: int = CELLS, lstm_layers: int = LSTM_LAYERS):
        super().__init__()
        self.tokens = CharCNNEncoder(n_chars, char_dim, filters, highway_layers, proj)

        def stack() -> nn.ModuleList:
            return nn.ModuleList(nn.LSTM(proj, cells, proj_size=proj, batch_first=True)
                                 for _ in range(lstm_layers))

        self.forward_lm, self.backward_lm = stack(), stack()
        self.mix_weights = nn.Parameter(torch.zeros(lstm_layers + 1))
        self.gamma = nn.Parameter(torch.ones(1))
        self.head = nn.Linear(2 * proj, num_labels)

    @staticmethod
    def _run(stack: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i, lstm in enumerate(stack):
            y, _ = lstm(x)
            x = y + x if i > 0 else y  # ELMo's residual connection between LSTM layers
            outputs.append(x)
        return outputs

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        tok = self.tokens(chars)
        fwd = self._run(self.forward_lm, tok)
        bwd = [y.flip(1) for y in self._run(self.backward_lm, tok.flip(1))]
        layers = [torch.cat([tok, tok], dim=-1)] + [torch.cat(p, dim=-1) for p in zip(fwd, bwd)]
        w = torch.softmax(self.mix_weights, dim=0)
        mixed = self.gamma * sum(wi * layer for wi, layer in zip(w, layers))
        return self.head(mixed.mean(dim=1))

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameters by part: ``char_embedding`` (the 262 x 16 table, an ``nn.Embedding``),
        ``char_cnn`` (convolutions, highway and projection to 512), ``bilstm`` (both LMs),
        ``head`` (scalar mix and classifier), and ``elmo`` (all but the head: the figure to
        hold against ELMo's published 93.6M)."""
        def n(*mods) -> int:
            return sum(p.numel() for m in mods for p in m.parameters())

        parts = {
            "char_embedding": n(self.tokens.char_embedding),
            "char_cnn": n(self.tokens.convs, self.tokens.highway, self.tokens.projection),
            "bilstm": n(self.forward_lm, self.backward_lm),
            "head": n(self.head) + self.mix_weights.numel() + self.gamma.numel(),
        }
        parts["elmo"] = parts["char_embedding"] + parts["char_cnn"] + parts["bilstm"]
        return parts


def char_inputs(words: int, chars_per_word: int = CHARS_PER_WORD, n_chars: int = N_CHARS):
    """``inputs(batch) -> {"chars": [batch, words + 2, chars_per_word]}`` for
    :class:`orchestrator.training.probe.Bench`: random character ids, ``words`` plus ELMo's
    sentence boundary tokens <S> and </S>, every word padded to ``chars_per_word`` characters
    (the CNN reads all of them, so the ids' values do not change the cost)."""
    def make(batch: int) -> dict:
        g = torch.Generator().manual_seed(batch)
        return {"chars": torch.randint(1, n_chars, (batch, words + 2, chars_per_word), generator=g)}
    return make
