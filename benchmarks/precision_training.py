"""Training in bf16 autocast vs fp32 on this CPU: the teacher's fine-tuning and the students.

Two parts, each in one run (``--parts`` picks):

- ``steps``: seconds per training step, fp32 vs ``torch.autocast("cpu", torch.bfloat16)``, for
  the teacher (MiniLM-L6 from the shared assets, batch 32 of SST-2 sentences) and the BiLSTM,
  BCN and Transformer students (their preset sizes, batch 64): the two precisions alternate
  step by step on the same batches; medians and ratios.
- ``teacher``: fine-tunes the teacher twice, fp32 and bf16, with the same seed and data
  (``search_spaces/demo.yaml``'s teacher settings unless overridden) and reports SST-2 dev
  accuracy (each evaluated in its own precision) and wall seconds (the log gives s/step).

    .venv/bin/python benchmarks/precision_training.py --parts steps
    .venv/bin/python benchmarks/precision_training.py --parts teacher --work-root /tmp/prec

The last printed line is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ASSETS = Path(os.environ.get("DISTILLRAY_ASSETS", REPO.parent / "shared" / "assets"))


def _sst2(n_train: int | None, max_dev: int | None = None):
    from tasks.config import DataConfig
    from tasks.loaders import load_task_data
    from tasks.registry import get_task

    d = load_task_data(DataConfig(task="sst2", source="glue_dir", glue_dir=str(ASSETS / "glue"),
                                  max_train_examples=n_train, max_dev_examples=max_dev),
                       get_task("sst2"))
    return d


def _alternate(step_fns: dict, n: int) -> dict[str, float]:
    """Median seconds per call of each function, calls alternating (after 2 warm-up rounds)."""
    times = {k: [] for k in step_fns}
    for r in range(n + 2):
        for k, fn in step_fns.items():
            t0 = time.perf_counter()
            fn(r)
            if r >= 2:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def teacher_steps(n: int, batch_size: int = 32, max_length: int = 64) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from orchestrator.runtime.precision import autocast

    path = str(ASSETS / "models" / "minilm-l6-uncased")
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    data = _sst2(batch_size * (n + 2)).train
    batches = [data[i * batch_size:(i + 1) * batch_size] for i in range(n + 2)]
    encs = [tok([e.text_a for e in b], truncation=True, max_length=max_length, padding=True,
                return_tensors="pt") for b in batches]
    labels = [torch.tensor([int(e.label) for e in b]) for b in batches]
    fns = {}
    for prec in ("fp32", "bf16"):
        model = copy.deepcopy(base).train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5)

        def step(r, model=model, opt=opt, prec=prec):
            with autocast(prec, "cpu"):
                out = model(**encs[r], labels=labels[r])
            out.loss.float().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        fns[prec] = step
    med = _alternate(fns, n)
    return {"teacher_step_s_fp32": med["fp32"], "teacher_step_s_bf16": med["bf16"],
            "teacher_step_bf16_speedup": med["fp32"] / med["bf16"]}


def student_steps(n: int, batch_size: int = 64, length: int = 40) -> dict:
    """The three students at the sizes of search_spaces/report.yaml (BiLSTM and BCN on 300-d
    embeddings, the 3-layer 384-wide Transformer), one SST-2-like batch of word ids a step."""
    import torch

    from students.config import StudentConfig
    from orchestrator.runtime.precision import autocast
    from students.factory import build_student

    out = {}
    vocab = 20000
    g = torch.Generator().manual_seed(0)
    lengths = [torch.randint(5, length + 1, (batch_size,), generator=g) for _ in range(n + 2)]
    ids = [torch.randint(5, vocab, (batch_size, length), generator=g)
           * (torch.arange(length)[None, :] < lens[:, None]) for lens in lengths]
    target = torch.randn(batch_size, 2, generator=g)
    for arch in ("bilstm", "bcn", "transformer"):
        cfg = StudentConfig(arch=arch, hidden_size=300, embed_dim=300)
        fns = {}
        for prec in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = build_student(cfg, vocab, {"sst2": 2}, pair=False).train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            def step(r, model=model, opt=opt, prec=prec):
                with autocast(prec, "cpu"):
                    y = model(ids[r])
                loss = torch.nn.functional.mse_loss(y.float(), target)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            fns[prec] = step
        med = _alternate(fns, n)
        out |= {f"{arch}_step_s_fp32": med["fp32"], f"{arch}_step_s_bf16": med["bf16"],
                f"{arch}_step_bf16_speedup": med["fp32"] / med["bf16"]}
        print(f"{arch}: fp32 {med['fp32'] * 1000:.1f} ms/step, bf16 {med['bf16'] * 1000:.1f} "
              f"ms/step ({med['fp32'] / med['bf16']:.2f}x)", flush=True)
    return out


def teacher_dev(work_root: str, n_train: int, epochs: float) -> dict:
    from orchestrator.config import TeacherConfig
    from orchestrator.stages.teacher import finetune_teacher
    from tasks.loaders import data_fingerprint
    from tasks.registry import get_task

    d = _sst2(None)
    dev = next(iter(d.dev.values()))
    out = {}
    for prec in ("fp32", "bf16"):
        cfg = TeacherConfig(model=str(ASSETS / "models" / "minilm-l6-uncased"), epochs=epochs,
                            lr=5e-5, batch_size=32, max_length=64, max_train_examples=n_train,
                            precision=prec)
        t0 = time.perf_counter()
        res = finetune_teacher(cfg, get_task("sst2"), d.train, dev, work_root,
                               data_fingerprint(d.train), log=print)
        out[f"teacher_dev_acc_{prec}"] = res.metrics["accuracy"]
        out[f"teacher_finetune_s_{prec}"] = time.perf_counter() - t0
        meta = Path(res.path) / "metrics.json"
        out[f"teacher_dev_acc_{prec}_reused"] = bool(res.reused and meta.is_file())
        out[f"teacher_path_{prec}"] = str(res.path)
        print(f"{prec}: dev accuracy {res.metrics['accuracy']:.4f}, {res.seconds:.0f}s "
              f"({'reused' if res.reused else 'trained'})", flush=True)
    out["teacher_dev_acc_delta_points"] = 100 * (out["teacher_dev_acc_bf16"]
                                                 - out["teacher_dev_acc_fp32"])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="steps,teacher")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per precision")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work-root", default=None)
    ap.add_argument("--n-train", type=int, default=8000)
    ap.add_argument("--epochs", type=float, default=1.0)
    args = ap.parse_args(argv)
    import torch

    from orchestrator.runtime.precision import cpu_bf16_support

    torch.set_num_threads(args.threads)
    print(f"CPU bf16: {cpu_bf16_support()}; {args.threads} torch threads", flush=True)
    parts = args.parts.split(",")
    res: dict = {}
    if "steps" in parts:
        res |= teacher_steps(args.steps)
        print(json.dumps(res), flush=True)
        res |= student_steps(args.steps)
    if "teacher" in parts:
        res |= teacher_dev(args.work_root or tempfile.mkdtemp(prefix="distillray-prec-"),
                           args.n_train, args.epochs)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
