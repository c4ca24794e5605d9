"""Does Tang's augmentation help? The same BiLSTM student, same budget, three training signals.

    .venv/bin/python benchmarks/augment_vs_gold.py            # SST-2, 8k-example subset

Rows (as in Tang et al. 2019, Table 1): gold labels only (cross-entropy), distilled on the
original training set (MSE on teacher logits), distilled on the Tang-augmented transfer set
(BiLSTM_SOFT). Each row is one MLflow search run (names below); the teacher, transfer sets and
soft labels are cached and shared. Prints dev accuracy per row and the teacher's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from orchestrator.app.run import resolve_run  # noqa: E402
from orchestrator.search.search import run_search  # noqa: E402

ROWS = [
    ("gold", "BiLSTM, gold labels only (CE)", ["train.loss=ce"]),
    ("kd", "BiLSTM distilled, no augmentation (MSE)", ["train.loss=mse"]),
    ("kd-aug", "BiLSTM_SOFT: distilled on the augmented set (MSE)",
     ["train.loss=mse", "augment.enabled=true"]),
]


def teacher_metrics(cfg) -> dict:
    """Dev metrics of the (cached) teacher every row shared."""
    from orchestrator.stages.pipeline import load_data
    from orchestrator.stages.teacher import teacher_key
    from tasks.loaders import data_fingerprint

    d = next(iter(load_data(cfg).values()))
    key = teacher_key(cfg.teacher, d.task, data_fingerprint(d.train))
    return json.loads((Path(cfg.work_root) / "teachers" / key / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="sst2_fixed")
    ap.add_argument("--set", action="append", default=[], help="extra overrides for every row")
    ap.add_argument("--prefix", default="aug-vs-gold")
    args = ap.parse_args()
    results = []
    for key, label, sets in ROWS:
        t0 = time.time()
        space, cfg, overrides = resolve_run(args.preset, sets + args.set,
                                            extra={"search.name": f"{args.prefix}-{key}"})
        out = run_search(cfg, space, overrides, resume=False)
        results.append({"row": label, "search": out.name,
                        "dev_accuracy": out.best.get("best_dev_score"),
                        "seconds": round(time.time() - t0, 1)})
    teacher = teacher_metrics(cfg)
    print("\n| row | dev accuracy | MLflow search | seconds |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['row']} | {r['dev_accuracy']:.4f} | {r['search']} | {r['seconds']} |")
    if teacher:
        print(f"\nteacher dev accuracy: {teacher.get('accuracy')}")
    gold, kd, soft = (r["dev_accuracy"] for r in results)
    verdict = "beats" if soft > max(gold, kd) else "DOES NOT beat"
    print(f"BiLSTM_SOFT {verdict} both baselines ({soft:.4f} vs gold {gold:.4f}, KD {kd:.4f})")


if __name__ == "__main__":
    main()
