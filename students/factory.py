"""Build a student from a :class:`students.config.StudentConfig` and count its parameters."""
from __future__ import annotations

import numpy as np
from torch import nn

from students.bcn import BCNStudent
from students.bilstm import BiLSTMStudent
from students.config import StudentConfig
from students.transformer import TransformerStudent

ARCHS = ("bilstm", "bcn", "transformer")
MAX_POSITION = 512  # BERT's; init_from_bert copies the first rows of a teacher with as many or more


def build_student(cfg: StudentConfig, vocab_size: int, heads: dict[str, int], pair: bool,
                  pretrained: np.ndarray | None = None,
                  max_position: int | None = None) -> nn.Module:
    """A fresh student. ``vocab_size`` is the student vocabulary's (bilstm, bcn) or the teacher
    tokenizer's (transformer). ``pretrained`` ([vocab, dim] word vectors) sets the embedding
    size of the LSTM students when given, else ``cfg.embed_dim`` does; the transformer ignores it.
    ``pair`` matters to the BiLSTM only (BCN takes one or two inputs per call; the transformer
    takes pairs joined). ``max_position`` sets the transformer's position table (default
    ``max(512, cfg.max_length)``; a teacher with fewer positions needs its own count to be copied)."""
    embed_dim = int(np.shape(pretrained)[1]) if pretrained is not None else cfg.embed_dim
    if cfg.arch == "bilstm":
        return BiLSTMStudent(vocab_size, embed_dim, cfg.hidden_size, cfg.num_layers,
                             cfg.relu_size, heads, cfg.dropout, pair, pretrained=pretrained,
                             trainable_embeddings=cfg.trainable_embeddings,
                             channels=cfg.channels)
    if cfg.arch == "bcn":
        return BCNStudent(vocab_size, embed_dim, cfg.hidden_size, heads, cfg.dropout,
                          pretrained=pretrained, trainable_embeddings=cfg.trainable_embeddings,
                          pooling=cfg.pooling)
    if cfg.arch == "transformer":
        return TransformerStudent(vocab_size, cfg.tf_hidden, cfg.tf_layers, cfg.tf_heads,
                                  cfg.tf_ffn, max_position or max(MAX_POSITION, cfg.max_length),
                                  2, heads, cfg.dropout)
    raise ValueError(f"student arch {cfg.arch!r}: choose {', '.join(ARCHS)}")


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
