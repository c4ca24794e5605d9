"""Deployable students: a saved student dir -> TorchScript + ONNX + a standalone ``predict.py``.

    export_student("runs/best/student", "deploy/sst2")        # or: distillray export ...

writes::

    deploy/sst2/
      model.ts          TorchScript (torch.jit.trace), inputs and outputs as the ONNX graph's
      model.onnx        ONNX, opset 17, dynamic ``batch`` and ``seq`` axes
      predict.py        standalone: numpy + onnxruntime (or torch) + the files here
      export.json       tasks, labels, inputs, outputs, max_length, encoding, tokenizer, checks
      vocab.json        word students (BiLSTM, BCN) | tokenizer/  Transformer students
      student.json      the training config and bundle meta, for provenance

Graph inputs (int64, right-padded with id 0):

    BiLSTM / BCN, single sentences   ids_a [batch, seq]
    BiLSTM / BCN, sentence pairs     ids_a, ids_b [batch, seq]   (both padded to ONE width;
                                     BCN single-sentence heads read ids_b = ids_a)
    Transformer                      input_ids, token_type_ids [batch, seq] ([CLS] a [SEP] b [SEP])

Outputs: one ``logits_<task>`` [batch, n] per task head (every head in one pass; ``n == 1`` is
a regression score).

LSTM students train on packed sequences, which neither tracer can record; the exported graphs
run the LSTMs unpacked (:func:`students.layers.run_lstm_unpacked`: right padding only follows
the valid steps of the forward direction, the backward direction reads each row's valid prefix
reversed), which gives the packed path's results. Every export is checked before it is
written off: the eager packed student, the TorchScript module and onnxruntime must agree within
``TOLERANCE`` on the check texts (batched and batch 1), and ``predict.py``'s own tokenization +
onnxruntime must match :class:`orchestrator.deploy.serving.StudentPredictor` (the training-time
tokenizer) end to end. A failed check raises :class:`ExportError`.

The export is built in a hidden temporary sibling of the output folder (``.<name>.tmp-<id>``) and
renamed into place only once every check has passed: a killed export never leaves an
``export.json`` naming a truncated model, a failed check leaves nothing runnable (the temporary
folder is removed), and exporting into a previous export's folder replaces it whole, so no stale
file of the old one stays.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from orchestrator.training import checkpoint as ckpt

FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
EXPORT_FILE = "export.json"
PREDICT_FILE = "predict.py"
OPSET = 17  # LayerNormalization is native from 17; onnxruntime >= 1.14 runs it
TOLERANCE = 1e-4
FORMAT_VERSION = 1

# used when the caller gives no check texts: plain, unknown words, punctuation, a mask token,
# an empty string, a long one (hits max_length truncation)
DEFAULT_CHECK_TEXTS = [
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "The movie wasn't GOOD -- but the café scenes were, oddly, great!",
    "a [MASK] film",
    "",
    "zxqv florbish",
    " ".join(["the long and winding road that leads to your door"] * 12),
    "Naïve ÉLAN, 东京 and co-operation.",
]


class ExportError(RuntimeError):
    """An export could not be produced or did not reproduce the student."""


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path]  # "onnx", "torchscript", "predict", "export_json"
    max_abs_diff: dict[str, float]  # per check: format (vs eager student) and "predict" (end to end)
    tasks: list[str]
    inputs: list[str]
    outputs: list[str]
    seconds: float
    info: dict = field(default_factory=dict, repr=False)  # export.json


# ---------------------------------------------------------------------------------------------
# the student dir

def check_student_dir(student_dir: str | Path) -> dict:
    """student.json of a complete student dir; names every missing file otherwise."""
    d = Path(student_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"student dir {d} does not exist")
    missing = [f for f in ckpt.STUDENT_FILES if not (d / f).is_file()]
    info = None
    if ckpt.STUDENT not in missing:
        try:
            info = json.loads((d / ckpt.STUDENT).read_text())
            encoding = info["meta"]["encoding"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ExportError(f"{d / ckpt.STUDENT} is not a distillray student.json ({e!r})") from None
        if encoding == "words" and not (d / ckpt.VOCAB).is_file():
            missing.append(ckpt.VOCAB)
        if encoding == "wordpiece" and not (d / ckpt.TOKENIZER).is_dir():
            missing.append(f"{ckpt.TOKENIZER}/")
    if missing:
        raise FileNotFoundError(f"student dir {d} lacks {', '.join(missing)}: export needs "
                                f"{ckpt.MODEL}, {ckpt.STUDENT} and {ckpt.VOCAB} (word students) or "
                                f"{ckpt.TOKENIZER}/ (word-piece students), as "
                                "orchestrator.training.train.save_student writes them")
    return info


def graph_inputs(meta: dict) -> list[str]:
    if meta["encoding"] == "wordpiece":
        return ["input_ids", "token_type_ids"]
    pair = any(m["pair"] for m in meta["tasks"].values())
    return ["ids_a", "ids_b"] if pair else ["ids_a"]


# ---------------------------------------------------------------------------------------------
# the traceable module

class _AllHeads(nn.Module):
    """Stands in for a student's TaskHeads: every head's output, in task order."""

    def __init__(self, heads: nn.Module, tasks: list[str]):
        super().__init__()
        self.inner = heads
        self.tasks = list(tasks)

    def forward(self, x: torch.Tensor, task: str | None = None) -> tuple[torch.Tensor, ...]:
        return tuple(self.inner[t](x) for t in self.tasks)


class ExportModule(nn.Module):
    """A copy of ``student`` in eval mode with unpacked LSTMs and every head as an output; takes
    the graph inputs positionally (see the module docstring)."""

    def __init__(self, student: nn.Module, tasks: list[str], inputs: list[str]):
        super().__init__()
        from students.layers import set_export_mode

        s = copy.deepcopy(student).eval()
        set_export_mode(s, True)
        s.heads = _AllHeads(s.heads, tasks)
        self.student = s
        self.wordpiece = inputs[0] == "input_ids"

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if self.wordpiece:
            return self.student(a, None, None, token_type_ids=b)
        return self.student(a, b, None)


# ---------------------------------------------------------------------------------------------
# export

def _quiet_tracers() -> None:
    """Inside ``warnings.catch_warnings()``: drop the tracers' expected warnings: Python values
    fixed at trace time (only the pad-to-common-width branches, which never fire on our inputs),
    the legacy exporter's and torch.jit's deprecation notes, the generic LSTM batch-size note
    (other batch sizes are checked below)."""
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
    warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch")


def _tokenizer_spec(tok_dir: Path, check_texts: list[str], max_length: int) -> dict:
    """How predict.py tokenizes: the built-in BERT WordPiece when tokenizer.json is one and
    reproduces the training-time tokenizer on the check texts, else the ``tokenizers`` package."""
    from transformers import AutoTokenizer

    from orchestrator.deploy import predict_standalone as ps

    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    tj = tok_dir / "tokenizer.json"
    if not tj.is_file():  # only slow-tokenizer files: write the fast one next to them
        hf.save_pretrained(str(tok_dir))
    if not tj.is_file():
        raise ExportError(f"{tok_dir} has no tokenizer.json and none could be written; "
                          "predict.py needs one")
    d = json.loads(tj.read_text(encoding="utf-8"))
    post = d.get("post_processor") or {}
    bert_like = ((d.get("normalizer") or {}).get("type") == "BertNormalizer"
                 and (d.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
                 and d["model"].get("type") == "WordPiece"
                 and post.get("type") in ("TemplateProcessing", "BertProcessing")
                 and {"[CLS]", "[SEP]"} <= set(d["model"]["vocab"])
                 and all(not t.get("normalized") and not t.get("lstrip") and not t.get("rstrip")
                         and not t.get("single_word") for t in d.get("added_tokens", [])))
    spec = {"kind": "bert-wordpiece", "file": "tokenizer/tokenizer.json", "reason": ""}
    if bert_like:
        mine = ps.WordPieceEncoder(tj, max_length)
        pairs = list(zip(check_texts, check_texts[1:] + check_texts[:1]))
        for a, b in [(t, None) for t in check_texts] + pairs:
            ref = hf(a, b, truncation=True, max_length=max_length)
            types = ref.get("token_type_ids") or [0] * len(ref["input_ids"])
            if mine.encode(a, b) != (list(ref["input_ids"]), list(types)):
                spec["reason"] = f"built-in WordPiece differs from the tokenizer on {a!r}"
                break
        else:
            return spec
    else:
        spec["reason"] = "tokenizer.json is not a BERT WordPiece tokenizer"
    spec["kind"] = "tokenizers"  # predict.py then needs the tokenizers package
    return spec


def export_student(student_dir: str | Path, out_dir: str | Path,
                   formats: tuple[str, ...] | list[str] = FORMATS,
                   check_texts: list[str] | None = None, tolerance: float = TOLERANCE,
                   opset: int = OPSET) -> ExportResult:
    """Export a saved student (``model.safetensors``, ``student.json``, ``vocab.json`` |
    ``tokenizer/``) to ``out_dir``. ``check_texts`` (default: :data:`DEFAULT_CHECK_TEXTS`) are
    run through every format; pair models pair text ``i`` with text ``i + 1``."""
    t0 = time.time()
    formats = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"formats={list(formats)}: choose from {', '.join(FORMATS)}")
    src, final = Path(student_dir), Path(out_dir)
    info = check_student_dir(src)
    if final.resolve() == src.resolve():
        raise ValueError("export into a new directory, not into the student dir")
    _check_replaceable(final)
    target = final.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    out = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        res = _export_into(src, out, info, formats, check_texts, tolerance, opset)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # a failed check leaves nothing runnable
        raise
    _publish(out, target)
    res.out_dir = final
    res.files = {k: final / v.name for k, v in res.files.items()}
    res.seconds = time.time() - t0
    return res


def _check_replaceable(final: Path) -> None:
    """``final`` may be new, empty, or a previous export (replaced whole); anything else is
    refused rather than deleted."""
    if final.exists() and not final.is_dir():
        raise ValueError(f"--out {final} exists and is not a directory")
    if final.is_dir() and any(final.iterdir()) and not (final / EXPORT_FILE).is_file():
        raise ValueError(f"--out {final} is a non-empty directory that holds no {EXPORT_FILE} "
                         "(not a previous export): give a new or empty directory; an earlier "
                         "export's folder is replaced whole")


def _publish(tmp: Path, final: Path) -> None:
    """Rename the checked export ``tmp`` to ``final``; a previous export there is moved aside
    first and removed after, so ``final`` never holds a mix of the two."""
    old = None
    if final.is_dir() and any(final.iterdir()):
        old = tmp.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    elif final.is_dir():
        final.rmdir()
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _export_into(src: Path, out: Path, info: dict, formats: tuple[str, ...],
                 check_texts: list[str] | None, tolerance: float, opset: int) -> ExportResult:
    """The export itself, written into ``out`` (the temporary folder)."""
    t0 = time.time()
    texts = [str(t) for t in (check_texts or DEFAULT_CHECK_TEXTS)]
    if len(texts) < 2:
        texts = texts + DEFAULT_CHECK_TEXTS[:2]

    from orchestrator.deploy import predict_standalone as ps
    from orchestrator.deploy.serving import StudentPredictor, task_info

    eager = StudentPredictor(src)  # the packed, training-time path and tokenizer
    meta = eager.info["meta"]
    tasks = task_info(meta)
    names = list(tasks)
    inputs = graph_inputs(meta)
    outputs = [tasks[t]["output"] for t in names]
    max_length = eager.max_length
    out.mkdir(parents=True, exist_ok=True)

    # vocabulary / tokenizer, provenance, the standalone predictor
    if meta["encoding"] == "words":
        shutil.copy(src / ckpt.VOCAB, out / ckpt.VOCAB)
        tok = None
    else:
        shutil.copytree(src / ckpt.TOKENIZER, out / ckpt.TOKENIZER, dirs_exist_ok=True)
        tok = _tokenizer_spec(out / ckpt.TOKENIZER, texts, max_length)
    shutil.copy(src / ckpt.STUDENT, out / ckpt.STUDENT)
    shutil.copy(Path(ps.__file__), out / PREDICT_FILE)
    export = {
        "format": "distillray-export", "version": FORMAT_VERSION,
        "arch": info["student"]["arch"], "encoding": meta["encoding"],
        "tasks": tasks, "inputs": inputs, "outputs": outputs,
        "input_dtype": "int64", "pad_id": 0, "max_length": max_length,
        "pair_inputs_share_width": len(inputs) == 2 and meta["encoding"] == "words",
        "files": {f: FILES[f] for f in formats}, "opset": opset if "onnx" in formats else None,
        "torch_version": torch.__version__,
    }
    if tok is None:
        export["vocab"] = ckpt.VOCAB
    else:
        export["tokenizer"] = tok
    (out / EXPORT_FILE).write_text(json.dumps(export, indent=1))

    # the graph inputs the checks use, encoded by predict.py's own tokenizer
    runner = ps.Predictor(out, runtime=None)  # predict.py's own tokenizer
    share = export["pair_inputs_share_width"]
    # (inputs, which heads they check): a pair graph checks its pair heads on real pairs and
    # its single-sentence heads (BCN) on ids_b = ids_a, as predict.py feeds them
    pair_heads = {t for t in names if tasks[t]["pair"]} if share else set()
    batches = []
    for sel, b in ((pair_heads, texts[1:] + texts[:1]), (set(names) - pair_heads, None)):
        if sel:
            batches += [(runner.encode(texts, b), sel),
                        (runner.encode(texts[:1], None if b is None else b[:1]), sel)]  # batch 1
    example = tuple(torch.from_numpy(x) for x in
                    runner.encode(texts[:2], (texts[1:] + texts[:1])[:2] if share else None).values())

    def reference(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Eager student, packed LSTMs, one call per task (single-sentence BCN heads: ids_b=None)."""
        t = {k: torch.from_numpy(v) for k, v in arrays.items()}
        res = []
        with torch.inference_mode():
            for name in names:
                if meta["encoding"] == "wordpiece":
                    y = eager.model(t["input_ids"], None, name, token_type_ids=t["token_type_ids"])
                else:
                    y = eager.model(t["ids_a"], t["ids_b"] if tasks[name]["pair"] else None, name)
                res.append(y.float().numpy())
        return res

    module = ExportModule(eager.model, names, inputs)
    files: dict[str, Path] = {}
    diffs: dict[str, float] = {}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            _quiet_tracers()
            if "torchscript" in formats:
                traced = torch.jit.trace(module, example, check_trace=False, strict=False)
                files["torchscript"] = out / FILES["torchscript"]
                torch.jit.save(traced, str(files["torchscript"]))
            if "onnx" in formats:
                files["onnx"] = out / FILES["onnx"]
                axes = {n: {0: "batch", 1: "seq"} for n in inputs}
                axes.update({n: {0: "batch"} for n in outputs})
                torch.onnx.export(module, example, str(files["onnx"]), dynamo=False,
                                  input_names=inputs, output_names=outputs, dynamic_axes=axes,
                                  opset_version=opset, do_constant_folding=True)
    except Exception as e:  # noqa: BLE001 - name the step and the student
        raise ExportError(f"exporting {info['student']['arch']} student {src} failed: {e}") from e

    if "onnx" in formats:
        import onnx

        m = onnx.load(str(files["onnx"]))
        onnx.checker.check_model(m)
        onnx.helper.set_model_props(m, {"distillray.export": json.dumps(
            {k: export[k] for k in ("arch", "encoding", "inputs", "outputs", "max_length")})})
        onnx.save(m, str(files["onnx"]))

    # checks: each format against the eager student on the same ids
    with warnings.catch_warnings():
        _quiet_tracers()  # torch.jit.load's deprecation note
        runners = {fmt: ps.Predictor(out, "onnx" if fmt == "onnx" else "torchscript", threads=1)
                   for fmt in formats}
    for fmt in formats:
        run = runners[fmt]
        worst = 0.0
        for arrays, sel in batches:
            got = run.run(arrays)
            for name, ref in zip(names, reference(arrays)):
                if name in sel and ref.size:
                    worst = max(worst, float(np.abs(got[name] - ref).max()))
        diffs[fmt] = worst
    # end to end: predict.py (its tokenizer + the exported graph) vs StudentPredictor
    run = runners["onnx" if "onnx" in formats else "torchscript"]
    worst = 0.0
    for name in names:
        b = texts[1:] + texts[:1] if tasks[name]["pair"] else None
        mine = run.logits(texts, b, name)
        ref = eager.logits(texts, b, name)
        worst = max(worst, float(np.abs(mine - ref).max()))
    diffs["predict"] = worst
    export["checks"] = {"texts": len(texts), "tolerance": tolerance,
                        "max_abs_diff": {k: float(v) for k, v in diffs.items()}}
    (out / EXPORT_FILE).write_text(json.dumps(export, indent=1))
    failed = {k: v for k, v in diffs.items() if not v <= tolerance}
    if failed:
        raise ExportError(f"export of {src} does not reproduce the student: max |diff| {failed} "
                          f"> {tolerance}; nothing was written")
    files["predict"] = out / PREDICT_FILE
    files["export_json"] = out / EXPORT_FILE
    return ExportResult(out, files, diffs, names, inputs, outputs, time.time() - t0, export)
