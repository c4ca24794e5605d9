"""A small BERT: token + position + segment embeddings -> LayerNorm -> N post-LN encoder layers
(GELU feed-forward) -> tanh pooler over [CLS] -> one head per task (MKD's Transformer student).

The layout is BERT's exactly, so :func:`init_from_bert` can copy a teacher's embeddings, a chosen
subset of its layers and its pooler. Pairs are one sequence ``[CLS] a [SEP] b [SEP]`` with
segment ids; pass them joined (``ids_a`` + ``token_type_ids``), or pass ``ids_a = [CLS] a [SEP]``
and ``ids_b = b [SEP]`` and the student joins them (segment 0 for a, 1 for b).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from students.heads import Student, TaskHeads

LN_EPS = 1e-12  # BERT's


class Embeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, max_position: int, type_vocab_size: int,
                 dropout: float):
        super().__init__()
        self.word = nn.Embedding(vocab_size, hidden, padding_idx=0)
        self.position = nn.Embedding(max_position, hidden)
        self.token_type = nn.Embedding(type_vocab_size, hidden)
        self.norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.size(1), device=ids.device)
        x = self.word(ids) + self.position(pos)[None] + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class Layer(nn.Module):
    """BERT's post-LN layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, hidden: int, heads_n: int, ffn: int, dropout: float):
        super().__init__()
        if hidden % heads_n:
            raise ValueError(f"hidden={hidden} is not divisible by heads_n={heads_n}")
        self.heads_n = heads_n
        self.p_drop = dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.ffn_out = nn.Linear(ffn, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        split = lambda z: z.view(b, t, self.heads_n, h // self.heads_n).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.p_drop if self.training else 0.0)
        a = a.transpose(1, 2).reshape(b, t, h)
        x = self.attn_norm(x + self.dropout(self.attn_out(a)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))


class TransformerStudent(Student):
    def __init__(self, vocab_size: int, hidden: int, layers: int, heads_n: int, ffn: int,
                 max_position: int, type_vocab_size: int, heads: dict[str, int],
                 dropout: float = 0.1, sep_token_id: int | None = None):
        super().__init__()
        self.hidden, self.heads_n, self.ffn = hidden, heads_n, ffn
        self.max_position = max_position
        self.sep_token_id = sep_token_id  # when set, segments are inferred from the first [SEP]
        self.embeddings = Embeddings(vocab_size, hidden, max_position, type_vocab_size, dropout)
        self.layers = nn.ModuleList(Layer(hidden, heads_n, ffn, dropout) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)
        self.heads = TaskHeads(hidden, heads, hidden=None, dropout=dropout)
        self.apply(_init_bert)

    def encode(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        """``(hidden states [B, T, H], pooled [CLS] [B, H])`` of one joined sequence."""
        if ids.size(1) > self.max_position:
            raise ValueError(f"input has {ids.size(1)} tokens; max_position is {self.max_position}")
        mask = ids != 0
        if token_type_ids is None:
            token_type_ids = self._segments(ids)
        x = self.embeddings(ids, token_type_ids)
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(~mask, torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        return x, torch.tanh(self.pooler(x[:, 0]))

    def _segments(self, ids: torch.Tensor) -> torch.Tensor:
        if self.sep_token_id is None:
            return torch.zeros_like(ids)
        sep = (ids == self.sep_token_id).long()
        return ((sep.cumsum(dim=1) - sep).clamp(max=1)) * (ids != 0).long()

    def forward(self, ids_a: torch.Tensor, ids_b: torch.Tensor | None = None,
                task: str | None = None, token_type_ids: torch.Tensor | None = None
                ) -> torch.Tensor:
        if ids_b is not None:
            if token_type_ids is not None:
                raise ValueError("pass either ids_b or token_type_ids, not both")
            ids_a, token_type_ids = join_pair(ids_a, ids_b)
        _, pooled = self.encode(ids_a, token_type_ids)
        return self.heads(pooled, task)


def join_pair(ids_a: torch.Tensor, ids_b: torch.Tensor):
    """Pack the non-padding tokens of ``ids_a`` then ``ids_b`` into one right-padded row each;
    returns ``(ids, token_type_ids)`` with segment 0 for a's tokens and 1 for b's."""
    ids = torch.cat([ids_a, ids_b], dim=1)
    seg = torch.cat([torch.zeros_like(ids_a), torch.ones_like(ids_b)], dim=1)
    pad = (ids == 0).long()
    order = torch.sort(pad, dim=1, stable=True).indices  # real tokens first, order kept
    ids, seg = ids.gather(1, order), seg.gather(1, order)
    width = int((ids != 0).sum(dim=1).max().clamp(min=1))
    ids, seg = ids[:, :width], seg[:, :width]
    return ids, seg * (ids != 0).long()


def _init_bert(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            m.weight.data[m.padding_idx].zero_()


# ---------------------------------------------------------------------------------------------
# initialising from a Hugging Face BERT

_LAYER_MAP = {  # HF name inside encoder.layer.{i}. -> student name inside layers.{j}.
    "attention.self.query": "query", "attention.self.key": "key",
    "attention.self.value": "value", "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm", "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out", "output.LayerNorm": "ffn_norm",
}
_EMB_MAP = {"word_embeddings": "word", "position_embeddings": "position",
            "token_type_embeddings": "token_type", "LayerNorm": "norm"}


def pick_layers(n_student: int, n_teacher: int, layers) -> list[int]:
    """Teacher layer for each student layer.

    ``"first"``: ``0..n-1``. ``"even"``: evenly spaced ending at the top layer,
    ``round((i+1) * L / n) - 1`` (6 -> 3 gives [1, 3, 5]; 12 -> 3 gives [3, 7, 11]).
    A list (or ``"0,2,4"``) is taken as given.
    """
    if isinstance(layers, str) and layers not in ("first", "even"):
        try:
            layers = [int(s) for s in layers.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"layers={layers!r}: use 'first', 'even' or indices like '0,2,4'") \
                from None
    if layers in ("first", "even") and n_student > n_teacher:
        raise ValueError(f"the student has {n_student} layers but the teacher only {n_teacher}")
    if layers == "first":
        return list(range(n_student))
    if layers == "even":
        return [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]
    layers = [int(i) for i in layers]
    if len(layers) != n_student:
        raise ValueError(f"layers={layers} names {len(layers)} teacher layers for a student "
                         f"with {n_student} layers")
    bad = [i for i in layers if not 0 <= i < n_teacher]
    if bad:
        raise ValueError(f"teacher layers {bad} do not exist: the teacher has {n_teacher} layers "
                         f"(0..{n_teacher - 1})")
    return layers


def _bert_state(bert_model: nn.Module) -> tuple[dict[str, torch.Tensor], int | None]:
    """The BertModel part of ``bert_model``'s state dict (prefix stripped) and its head count."""
    sd = bert_model.state_dict()
    anchor = "embeddings.word_embeddings.weight"
    prefixes = [k[: -len(anchor)] for k in sd if k.endswith(anchor)]
    if len(prefixes) != 1:
        raise ValueError("not a BERT model: expected one embeddings.word_embeddings.weight, "
                         f"found {len(prefixes)}")
    pre = prefixes[0]
    state = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    heads = next((m.config.num_attention_heads for m in bert_model.modules()
                  if hasattr(getattr(m, "config", None), "num_attention_heads")), None)
    return state, heads


@torch.no_grad()
def init_from_bert(student: TransformerStudent, bert_model: nn.Module, layers="first") -> list[int]:
    """Copy embeddings, the chosen encoder layers (student layer i <- teacher layer layers[i])
    and the pooler from a Hugging Face ``BertModel`` (or any model holding one, e.g.
    ``BertForSequenceClassification``). Task heads are left as they are. Sizes (hidden, ffn,
    attention heads, vocabulary) must match; the student may have fewer position or segment
    embeddings (the first rows are copied). Returns the teacher layers used."""
    state, teacher_heads = _bert_state(bert_model)
    n_teacher = len({k.split(".")[2] for k in state if k.startswith("encoder.layer.")})
    chosen = pick_layers(len(student.layers), n_teacher, layers)

    def check(name: str, want: int, have: int):
        if want != have:
            raise ValueError(f"{name} differs: student {want}, teacher {have}")

    word = state["embeddings.word_embeddings.weight"]
    check("hidden size", student.hidden, word.shape[1])
    check("vocab size", student.embeddings.word.num_embeddings, word.shape[0])
    check("ffn size", student.ffn, state["encoder.layer.0.intermediate.dense.weight"].shape[0])
    if teacher_heads is not None:
        check("number of attention heads", student.heads_n, teacher_heads)
    for hf, ours in (("position_embeddings", student.embeddings.position),
                     ("token_type_embeddings", student.embeddings.token_type)):
        have = state[f"embeddings.{hf}.weight"].shape[0]
        if ours.num_embeddings > have:
            raise ValueError(f"{hf}: the student has {ours.num_embeddings} rows, the teacher {have}")

    targets = dict(student.named_parameters())

    def copy(src: str, dst: str):
        t = state[src]
        targets[dst].copy_(t[: targets[dst].shape[0]])

    for hf, ours in _EMB_MAP.items():
        for p in ("weight", "bias") if hf == "LayerNorm" else ("weight",):
            copy(f"embeddings.{hf}.{p}", f"embeddings.{ours}.{p}")
    for j, i in enumerate(chosen):
        for hf, ours in _LAYER_MAP.items():
            for p in ("weight", "bias"):
                copy(f"encoder.layer.{i}.{hf}.{p}", f"layers.{j}.{ours}.{p}")
    if "pooler.dense.weight" in state:
        copy("pooler.dense.weight", "pooler.weight")
        copy("pooler.dense.bias", "pooler.bias")
    return chosen
