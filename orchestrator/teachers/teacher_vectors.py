"""Word vectors for a word-level student from the teacher's own input embeddings
(``student.embeddings=teacher``).

Each word of the student's vocabulary gets the mean of the input (word-piece) embedding rows of
the teacher's BASE model (``teacher.model``, the pre-trained encoder, not a fine-tuned teacher)
over the pieces its tokenizer splits the word into, without special tokens
(:func:`tasks.embeddings.subword_mean_vectors`: words the tokenizer maps only to its unknown
token get that token's row; ``<pad>`` stays zero). The vector size is the model's input
embedding size (its hidden size for BERT-likes: 384 for MiniLM-L6). Weights are read from
safetensors, or from a PyTorch checkpoint with ``weights_only=True``; never unpickled freely.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from orchestrator.config import TEACHER_EMBEDDINGS
from orchestrator.teachers.teacher_model import TeacherError, base_model_identity
from tasks.embeddings import subword_mean_vectors
from tasks.vocab import Vocab

VERSION = 1  # of the rule above; part of the bundle key (bump when the vectors change)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


def key_part(model: str) -> dict:
    """What enters the bundle key for these vectors: the rule's version and the base model's
    identity (a local dir by the content of its files, else its hub name)."""
    return {"source": TEACHER_EMBEDDINGS, "model": base_model_identity(model), "v": VERSION}


def input_embedding_dim(model: str) -> int:
    """The size of the base model's input embeddings, from its config (no weights loaded)."""
    p = Path(model).expanduser()
    if (p / "config.json").is_file():
        conf = json.loads((p / "config.json").read_text())
    else:
        from transformers import AutoConfig

        conf = AutoConfig.from_pretrained(model).to_dict()
    dim = conf.get("embedding_size") or conf.get("hidden_size") or conf.get("dim")
    if not dim:
        raise TeacherError(f"teacher.model={model}: its config names no embedding_size or "
                           "hidden_size; student.embeddings=teacher cannot size the vectors")
    return int(dim)


def load_input_embeddings(model: str):
    """(tokenizer, float32 [pieces, dim] input embedding matrix) of a base model: a local
    Hugging Face dir or a hub name (the local cache when offline)."""
    from transformers import AutoModel, AutoTokenizer

    if model.startswith("random:"):
        raise TeacherError(f"student.embeddings=teacher needs a pre-trained teacher.model, not "
                           f"{model} (built afresh for each task)")
    try:
        tok = AutoTokenizer.from_pretrained(model)
        encoder = AutoModel.from_pretrained(model, weights_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise TeacherError(f"student.embeddings=teacher: cannot load the tokenizer and input "
                           f"embeddings of teacher.model={model!r}: {e}. Offline? Point "
                           "teacher.model at a local Hugging Face model dir") from None
    table = encoder.get_input_embeddings().weight.detach().float().cpu().numpy().copy()
    del encoder
    return tok, table


def teacher_word_vectors(model: str, vocab: Vocab) -> tuple[np.ndarray, int]:
    """(float32 [len(vocab), dim] vectors, number of words with a known piece) for ``vocab``
    from base model ``model`` (see the module doc)."""
    tok, table = load_input_embeddings(model)
    pieces = tok(list(vocab.words), add_special_tokens=False)["input_ids"]
    return subword_mean_vectors(vocab, pieces, table, tok.unk_token_id, tok.mask_token_id)
