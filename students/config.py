"""The ``student`` section of a run's config: the student's architecture and input encoding.
:func:`students.factory.build_student` reads it; ``orchestrator.config.ExperimentConfig``
composes it with the other sections."""
from __future__ import annotations

from dataclasses import dataclass

from knobs import knob


@dataclass(frozen=True)
class StudentConfig:
    """The student's architecture and input encoding."""
    arch: str = knob("bilstm", "bilstm (Tang) | bcn (bi-attentive LSTM, MKD) | transformer.")
    embeddings: str | None = knob(None, "Word vectors (bilstm, bcn): a GloVe/word2vec text "
                                  "file, \"glove\" for the local GloVe 50d, or \"teacher\": "
                                  "each word gets the mean of its word pieces' rows in the input "
                                  "embeddings of `teacher.model` (the pre-trained base model, "
                                  "not random:*; the size is its input-embedding size, the "
                                  "hidden size of a BERT: 384 for MiniLM-L6; words only [UNK] "
                                  "to its tokenizer get the [UNK] row); null: random "
                                  "initialization. Ignored by transformer "
                                  "students (they use the teacher's tokenizer; see "
                                  "`init_from_teacher`).")
    embed_dim: int = knob(300, "Embedding size when `embeddings` is null (else the vectors' "
                          "size).")
    trainable_embeddings: bool = knob(True, "Fine-tune the word embeddings.")
    channels: str = knob("single", "single | multi (a static and a trainable copy of the "
                         "embeddings).")
    hidden_size: int = knob(150, "LSTM hidden size per direction (bilstm, bcn).")
    num_layers: int = knob(1, "LSTM layers (bilstm).")
    relu_size: int = knob(200, "Size of the ReLU layer before the output (bilstm).")
    dropout: float = knob(0.1, "Dropout, in [0, 1).")
    max_length: int = knob(64, "Truncation length in tokens.")
    vocab_min_freq: int = knob(1, "Least count of a training-set word to enter the vocabulary.")
    vocab_max_size: int | None = knob(None, "Largest vocabulary (most frequent words first); "
                                      "null: no cap.")
    tf_layers: int = knob(3, "Transformer student: layers.")
    tf_hidden: int = knob(384, "Transformer student: hidden size (the teacher's, to copy its "
                          "layers).")
    tf_heads: int = knob(12, "Transformer student: attention heads.")
    tf_ffn: int = knob(1536, "Transformer student: feed-forward size.")
    init_from_teacher: str = knob("none", "Transformer student: start from teacher layers: none "
                                  "| first | even | indices like \"0,2,4\"; tf_hidden, tf_heads "
                                  "and tf_ffn must then match the teacher.")
    pooling: list[str] = knob(["max", "mean", "min", "self"], "BCN: poolings of its outputs "
                              "(max, mean, min, self-attentive).")
