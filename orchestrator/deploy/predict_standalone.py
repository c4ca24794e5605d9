"""Text in, predictions out, for an exported distillray student. Copied as ``predict.py``.

This file runs WITHOUT distillray: it needs numpy and onnxruntime (or torch, for the
TorchScript model) and the files written next to it by ``distillray export``::

    export.json       tasks, labels, input names, max_length, encoding, tokenizer settings
    model.onnx        ONNX graph (dynamic batch and sequence axes)
    model.ts          TorchScript module (same inputs and outputs)
    vocab.json        word vocabulary (BiLSTM / BCN students), or
    tokenizer/        the teacher's tokenizer (Transformer students; tokenizer.json is read)

Use from Python::

    from predict import predict
    predict(["a gripping , funny film ."])
    # [{"task": "sst2", "label": "positive", "probabilities": {"negative": .., "positive": ..},
    #   "logits": [.., ..]}]
    predict(["a man is eating ."], ["someone eats ."], task="stsb")  # [{"task": .., "score": ..}]

or from a shell (one text per argument, or one per stdin line; pairs as ``A<TAB>B``)::

    python predict.py "a gripping , funny film ."
    cut -f1 dev.tsv | python predict.py --task sst2 --runtime torchscript

Tokenization is reimplemented here (no distillray, transformers or tokenizers needed): the word
tokenizer of ``tasks.text`` for word students, BERT's WordPiece (normalize, split on whitespace
and punctuation, greedy longest-match subwords, [CLS] a [SEP] b [SEP], longest-first
truncation) for Transformer students. ``distillray export`` checks both against the training-time
tokenizers before it writes the model; when the WordPiece copy cannot reproduce the tokenizer,
export.json says ``"kind": "tokenizers"`` and this file uses the ``tokenizers`` package instead.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EXPORT_FILE = "export.json"


# ---------------------------------------------------------------------------------------------
# word students: the same tokenizer as tasks.text.tokenize, and the vocabulary lookup

_WORD = re.compile(r"n't|\w+(?:[-.]\w+)*|'\w*|[^\w\s]", re.UNICODE)


def _split_word(chunk: str) -> list[str]:
    low = chunk.lower()
    if low.endswith("n't") and len(low) > 3:
        return _WORD.findall(low[:-3]) + ["n't"]
    return _WORD.findall(low)


def word_tokenize(text: str, mask_token: str) -> list[str]:
    out: list[str] = []
    for chunk in text.split():
        if chunk == mask_token:
            out.append(mask_token)
        elif mask_token in chunk:
            pieces = chunk.split(mask_token)
            for i, piece in enumerate(pieces):
                if piece:
                    out.extend(_split_word(piece))
                if i < len(pieces) - 1:
                    out.append(mask_token)
        else:
            out.extend(_split_word(chunk))
    return out


class WordEncoder:
    """ids of ``<pad>``, ``<unk>``, ``<mask>`` are 0, 1, 2; texts are truncated, not padded."""

    def __init__(self, vocab_file: Path, max_length: int):
        data = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
        self.stoi = {w: i for i, w in enumerate(data["words"])}
        self.mask_token = data.get("mask_token", "[MASK]")
        self.max_length = max_length

    def encode(self, text: str) -> list[int]:
        toks = word_tokenize(text, self.mask_token)[: self.max_length]
        return [2 if t == self.mask_token else self.stoi.get(t, 1) for t in toks]


# ---------------------------------------------------------------------------------------------
# Transformer students: BERT WordPiece, as tokenizer.json describes it

def _is_control(c: str) -> bool:
    return c not in "\t\n\r" and unicodedata.category(c).startswith("C")


def _is_whitespace(c: str) -> bool:
    return c in " \t\n\r" or unicodedata.category(c) == "Zs" or c.isspace()


def _is_punctuation(c: str) -> bool:
    o = ord(c)
    if 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _is_cjk(o: int) -> bool:
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2A6DF
            or 0x2A700 <= o <= 0x2B73F or 0x2B740 <= o <= 0x2B81F or 0x2B820 <= o <= 0x2CEAF
            or 0xF900 <= o <= 0xFAFF or 0x2F800 <= o <= 0x2FA1F)


class WordPieceEncoder:
    """BERT tokenization from a tokenizer.json with BertNormalizer, BertPreTokenizer, a WordPiece
    model and [CLS]/[SEP] templates. Special tokens written in the text (``[MASK]``) stay whole."""

    def __init__(self, tokenizer_json: Path, max_length: int):
        d = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
        norm, model = d.get("normalizer") or {}, d["model"]
        self.clean = norm.get("clean_text", True)
        self.chinese = norm.get("handle_chinese_chars", True)
        self.lower = norm.get("lowercase", True)
        strip = norm.get("strip_accents")
        self.strip_accents = self.lower if strip is None else strip
        self.vocab: dict[str, int] = model["vocab"]
        self.unk = self.vocab[model.get("unk_token", "[UNK]")]
        self.prefix = model.get("continuing_subword_prefix", "##")
        self.max_chars = int(model.get("max_input_chars_per_word", 100))
        specials = {t["content"]: t["id"] for t in d.get("added_tokens", [])}
        self.specials = specials
        self.special_re = (re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
                           if specials else None)
        self.cls, self.sep = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.max_length = max_length

    def _normalize(self, text: str) -> str:
        if self.clean:
            text = "".join(" " if _is_whitespace(c) else c for c in text
                           if not (c == "\0" or c == "\ufffd" or _is_control(c)))
        if self.chinese:
            text = "".join(f" {c} " if _is_cjk(ord(c)) else c for c in text)
        if self.strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFD", text)
                           if unicodedata.category(c) != "Mn")
        if self.lower:
            text = text.lower()
        return text

    def _words(self, text: str) -> list[str]:
        out: list[str] = []
        for chunk in text.split():
            cur = ""
            for c in chunk:
                if _is_punctuation(c):
                    if cur:
                        out.append(cur)
                        cur = ""
                    out.append(c)
                else:
                    cur += c
            if cur:
                out.append(cur)
        return out

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return ids

    def tokenize(self, text: str) -> list[int]:
        parts, pos = [], 0
        if self.special_re is not None:
            for m in self.special_re.finditer(text):
                parts.append((text[pos:m.start()], None))
                parts.append((None, self.specials[m.group(0)]))
                pos = m.end()
        parts.append((text[pos:], None))
        ids: list[int] = []
        for piece, special in parts:
            if special is not None:
                ids.append(special)
            elif piece:
                for w in self._words(self._normalize(piece)):
                    ids.extend(self._wordpiece(w))
        return ids

    def encode(self, a: str, b: str | None) -> tuple[list[int], list[int]]:
        x = self.tokenize(a)
        if b is None:
            x = x[: max(0, self.max_length - 2)]
            ids = [self.cls, *x, self.sep]
            return ids, [0] * len(ids)
        y = self.tokenize(b)
        budget = max(0, self.max_length - 3)
        if len(x) + len(y) > budget:  # longest first, as the tokenizers library truncates
            n1, n2, swap = len(x), len(y), len(x) > len(y)
            if swap:
                n1, n2 = n2, n1
            n2 = n1 if n1 > budget else max(n1, budget - n1)
            if n1 + n2 > budget:
                n1 = budget // 2
                n2 = n1 + budget % 2
            if swap:
                n1, n2 = n2, n1
            x, y = x[:n1], y[:n2]
        ids = [self.cls, *x, self.sep, *y, self.sep]
        return ids, [0] * (len(x) + 2) + [1] * (len(y) + 1)


class TokenizersEncoder:
    """Fallback: the ``tokenizers`` package reads tokenizer.json (exact for any tokenizer)."""

    def __init__(self, tokenizer_json: Path, max_length: int):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tokenizer_json))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length)

    def encode(self, a: str, b: str | None) -> tuple[list[int], list[int]]:
        e = self.tok.encode(a, b) if b is not None else self.tok.encode(a)
        return list(e.ids), list(e.type_ids)


# ---------------------------------------------------------------------------------------------
# the model

def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _pad(rows: list[list[int]], width: int) -> np.ndarray:
    out = np.zeros((len(rows), max(1, width)), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def predictions(task: str, spec: dict, logits: np.ndarray) -> list[dict]:
    """Logits [B, n] -> one dict per row: ``{"task", "label", "probabilities", "logits"}`` for a
    classification task (``spec``: an export.json task entry, with ``labels``), ``{"task",
    "score"}`` for regression. The MLflow model of a student answers with the same dicts."""
    out = []
    for row in np.asarray(logits):
        if spec["regression"]:
            out.append({"task": task, "score": float(row[0])})
            continue
        p = _softmax(row.astype(np.float64))
        labels = spec["labels"]
        out.append({"task": task, "label": labels[int(np.argmax(row))],
                    "probabilities": {lab: float(v) for lab, v in zip(labels, p)},
                    "logits": [float(v) for v in row]})
    return out


class Predictor:
    """An exported student; ``runtime`` is ``onnx`` (onnxruntime), ``torchscript`` (torch) or
    None (tokenization only: :meth:`encode`)."""

    def __init__(self, model_dir: str | Path = HERE, runtime: str | None = "onnx",
                 threads: int | None = None):
        self.dir = Path(model_dir)
        self.info = json.loads((self.dir / EXPORT_FILE).read_text())
        self.tasks: dict = self.info["tasks"]
        self.inputs: list[str] = self.info["inputs"]
        self.outputs: list[str] = [t["output"] for t in self.tasks.values()]
        self.max_length = int(self.info["max_length"])
        self.encoding = self.info["encoding"]
        if self.encoding == "words":
            self.encoder = WordEncoder(self.dir / self.info["vocab"], self.max_length)
        else:
            tok = self.info["tokenizer"]
            cls = WordPieceEncoder if tok["kind"] == "bert-wordpiece" else TokenizersEncoder
            self.encoder = cls(self.dir / tok["file"], self.max_length)
        self.runtime, self.threads = runtime, threads
        if runtime is None:
            pass
        elif runtime == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(self.dir / self.info["files"]["onnx"]), opts,
                                                providers=["CPUExecutionProvider"])
        elif runtime == "torchscript":
            import torch

            self.threads = threads  # set around each call, not process-wide
            self.module = torch.jit.load(str(self.dir / self.info["files"]["torchscript"]))
            self.module.eval()
        else:
            raise ValueError(f"runtime={runtime!r}: choose onnx or torchscript")

    # -- inputs
    def encode(self, texts: list[str], texts_b: list[str] | None = None) -> dict[str, np.ndarray]:
        """The model's input arrays for a batch (padded with id 0; pairs share one width)."""
        if texts_b is not None and len(texts_b) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(texts_b)} second texts")
        if self.encoding == "words":
            a = [self.encoder.encode(t) for t in texts]
            if "ids_b" not in self.inputs:
                if texts_b is not None:
                    raise ValueError("this model reads single sentences; texts_b must be None")
                return {"ids_a": _pad(a, max(map(len, a), default=1))}
            # a pair graph: single-sentence tasks read the sentence on both sides (BCN's rule)
            b = [self.encoder.encode(t) for t in texts_b] if texts_b is not None else a
            w = max(max(map(len, a), default=1), max(map(len, b), default=1))
            return {"ids_a": _pad(a, w), "ids_b": _pad(b, w)}
        enc = [self.encoder.encode(a, None if texts_b is None else texts_b[i])
               for i, a in enumerate(texts)]
        w = max(len(ids) for ids, _ in enc) if enc else 1
        return {"input_ids": _pad([ids for ids, _ in enc], w),
                "token_type_ids": _pad([ty for _, ty in enc], w)}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw outputs by task: ``{task: logits [B, n]}``."""
        if self.runtime is None:
            raise RuntimeError("this Predictor was opened with runtime=None (tokenization only)")
        if self.runtime == "onnx":
            outs = self.session.run(self.outputs, {k: inputs[k] for k in self.inputs})
        else:
            import torch

            prev = torch.get_num_threads()
            if self.threads:
                torch.set_num_threads(self.threads)
            try:
                with torch.inference_mode():
                    res = self.module(*[torch.from_numpy(inputs[k]) for k in self.inputs])
            finally:
                torch.set_num_threads(prev)
            outs = [r.numpy() for r in (res if isinstance(res, (tuple, list)) else [res])]
        return dict(zip(self.tasks, outs))

    def logits(self, texts: list[str], texts_b: list[str] | None = None, task: str | None = None,
               batch_size: int = 64) -> np.ndarray:
        task = self._task(task, texts_b)
        n_out = int(self.tasks[task]["num_outputs"])
        chunks = [self.run(self.encode(texts[s:s + batch_size],
                                       None if texts_b is None else texts_b[s:s + batch_size]))[task]
                  for s in range(0, len(texts), batch_size)]
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, n_out), np.float32)

    def predict(self, texts: list[str], texts_b: list[str] | None = None, task: str | None = None,
                batch_size: int = 64) -> list[dict]:
        task = self._task(task, texts_b)
        return predictions(task, self.tasks[task], self.logits(texts, texts_b, task, batch_size))

    def _task(self, task: str | None, texts_b) -> str:
        if task is None:
            if len(self.tasks) != 1:
                raise ValueError(f"this model has tasks {list(self.tasks)}: pass task=")
            task = next(iter(self.tasks))
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; tasks: {list(self.tasks)}")
        if self.tasks[task]["pair"] and texts_b is None:
            raise ValueError(f"task {task!r} reads sentence pairs: pass texts_b")
        if not self.tasks[task]["pair"] and texts_b is not None:
            raise ValueError(f"task {task!r} reads single sentences: texts_b must be None")
        return task


_CACHE: dict[tuple, Predictor] = {}


def predict(texts: list[str], texts_b: list[str] | None = None, task: str | None = None,
            model_dir: str | Path = HERE, runtime: str = "onnx") -> list[dict]:
    """Predictions for raw texts: ``{"task", "label", "probabilities", "logits"}`` per text for
    classification tasks, ``{"task", "score"}`` for regression. The model is loaded once."""
    key = (str(Path(model_dir).resolve()), runtime)
    if key not in _CACHE:
        _CACHE[key] = Predictor(model_dir, runtime)
    return _CACHE[key].predict(list(texts), None if texts_b is None else list(texts_b), task)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("texts", nargs="*", help="texts (default: one per stdin line); pairs as A<TAB>B")
    ap.add_argument("--task", help="task name (needed when the model has several heads)")
    ap.add_argument("--runtime", default="onnx", choices=("onnx", "torchscript"))
    ap.add_argument("--model-dir", default=str(HERE))
    args = ap.parse_args(argv)
    lines = args.texts or [ln.rstrip("\n") for ln in sys.stdin if ln.strip()]
    pred = Predictor(args.model_dir, args.runtime)
    task = args.task or (next(iter(pred.tasks)) if len(pred.tasks) == 1 else None)
    if task not in pred.tasks:
        raise SystemExit(f"pass --task, one of {list(pred.tasks)}")
    if pred.tasks[task]["pair"]:
        pairs = [ln.split("\t", 1) + [""] for ln in lines]
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    else:
        a, b = lines, None
    for r in pred.predict(a, b, task):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
