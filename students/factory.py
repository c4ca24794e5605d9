"""The built-in student kinds (registered in :mod:`students.registry`), building a student from
a :class:`students.config.StudentConfig`, and counting its parameters."""
from __future__ import annotations

import numpy as np
from torch import nn

from students.bcn import BCNStudent
from students.bilstm import BiLSTMStudent
from students.config import StudentConfig
from students.registry import StudentKind, register, student_kind
from students.transformer import TransformerStudent

MAX_POSITION = 512  # BERT's; init_from_bert copies the first rows of a teacher with as many or more


def build_student(cfg: StudentConfig, vocab_size: int, heads: dict[str, int], pair: bool,
                  pretrained: np.ndarray | None = None,
                  max_position: int | None = None) -> nn.Module:
    """A fresh student of the kind ``cfg.arch`` names (:mod:`students.registry`).
    ``vocab_size`` is the student vocabulary's (word students) or the teacher tokenizer's
    (word-piece students). ``pretrained`` ([vocab, dim] word vectors) sets the embedding size of
    word students when given, else ``cfg.embed_dim`` does; word-piece students ignore it. ``pair``
    matters to the BiLSTM only (BCN takes one or two inputs per call; the transformer takes pairs
    joined). ``max_position`` sets the transformer's position table (default
    ``max(512, cfg.max_length)``; a teacher with fewer positions needs its own count to be
    copied)."""
    return student_kind(cfg.arch).build(cfg, vocab_size, heads, pair, pretrained, max_position)


def _embed_dim(cfg: StudentConfig, pretrained: np.ndarray | None) -> int:
    return int(np.shape(pretrained)[1]) if pretrained is not None else cfg.embed_dim


def _bilstm(cfg, vocab_size, heads, pair, pretrained, max_position) -> nn.Module:
    return BiLSTMStudent(vocab_size, _embed_dim(cfg, pretrained), cfg.hidden_size, cfg.num_layers,
                         cfg.relu_size, heads, cfg.dropout, pair, pretrained=pretrained,
                         trainable_embeddings=cfg.trainable_embeddings, channels=cfg.channels)


def _bcn(cfg, vocab_size, heads, pair, pretrained, max_position) -> nn.Module:
    return BCNStudent(vocab_size, _embed_dim(cfg, pretrained), cfg.hidden_size, heads, cfg.dropout,
                      pretrained=pretrained, trainable_embeddings=cfg.trainable_embeddings,
                      pooling=cfg.pooling)


def _transformer(cfg, vocab_size, heads, pair, pretrained, max_position) -> nn.Module:
    return TransformerStudent(vocab_size, cfg.tf_hidden, cfg.tf_layers, cfg.tf_heads, cfg.tf_ffn,
                              max_position or max(MAX_POSITION, cfg.max_length), 2, heads,
                              cfg.dropout)


register(StudentKind("bilstm", "words", False, _bilstm, lambda c: f"h{c.hidden_size}",
                     "BiLSTM with a ReLU layer (Tang et al.)"))
register(StudentKind("bcn", "words", False, _bcn, lambda c: f"h{c.hidden_size}",
                     "bi-attentive classification network (MKD)"))
register(StudentKind("transformer", "wordpiece", True, _transformer,
                     lambda c: f"L{c.tf_layers} h{c.tf_hidden}",
                     "small Transformer on the teacher's word pieces (MKD)"))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total": all parameters, "non_embedding": those outside nn.Embedding tables}``."""
    total = sum(p.numel() for p in model.parameters())
    if hasattr(model, "non_embedding_parameters"):
        non_emb = int(model.non_embedding_parameters())
    else:
        emb = {id(p) for m in model.modules() if isinstance(m, nn.Embedding)
               for p in m.parameters()}
        non_emb = sum(p.numel() for p in model.parameters() if id(p) not in emb)
    return {"total": total, "non_embedding": non_emb}
