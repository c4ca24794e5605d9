"""A BiLSTM student trained on bf16 teacher labels vs the same student (same seed, data and
settings) trained on fp32 labels: their SST-2 dev scores.

The preset is ``search_spaces/sst2_fixed.yaml`` (one fixed BiLSTM with GloVe), on the first
``--n`` training sentences, without augmentation; the teacher is a given fine-tuned teacher dir.
Each precision builds its own bundle (labels through the pool in that precision; the fidelity
gate's threshold is set to 0 so bf16 is never replaced) and trains with one Ray Train worker::

    .venv/bin/python benchmarks/bf16_labels_student.py --teacher <work_root>/teachers/<key>

The last printed line is one JSON object: each precision's last and best dev score and their
difference in points.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="a fine-tuned SST-2 teacher dir")
    ap.add_argument("--n", type=int, default=4000, help="training sentences")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--work-root", default=None)
    ap.add_argument("--num-cpus", type=float, default=2)
    args = ap.parse_args(argv)

    import ray
    import yaml

    from orchestrator.config import build_config, find_assets, use_local_assets
    from orchestrator.stages.pipeline import TeacherRef, load_data, prepare_bundle
    from orchestrator.teachers.teacher_model import teacher_identity
    from orchestrator.training.distill import distill_one

    work_root = args.work_root or tempfile.mkdtemp(prefix="distillray-bf16-labels-")
    preset = yaml.safe_load((REPO / "search_spaces" / "sst2_fixed.yaml").read_text())["config"]
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    out: dict = {"n": args.n, "epochs": args.epochs}
    try:
        for p in ("fp32", "bf16"):
            cfg = use_local_assets(build_config(preset, {
                "data.max_train_examples": args.n, "train.epochs": args.epochs,
                "train.num_workers": 1, "pool.precision": p, "pool.fidelity_threshold": 0.0,
                "work_root": work_root}), find_assets())
            data = load_data(cfg)
            teachers = {"sst2": TeacherRef(path=str(Path(args.teacher).resolve()),
                                           key=teacher_identity(args.teacher), head="sst2",
                                           max_length=cfg.teacher.max_length)}
            t0 = time.perf_counter()
            bundle = prepare_bundle(cfg, data, teachers)
            label_s = time.perf_counter() - t0
            student = distill_one(cfg, bundle.path, storage=os.path.join(work_root, "train"),
                                  name=f"student-{p}")
            df = student.result.metrics_dataframe
            out[f"{p}_dev_last"] = float(df["dev_score"].iloc[-1])
            out[f"{p}_dev_best"] = float(df["dev_score"].max())
            out[f"{p}_bundle_s"] = label_s
            out[f"{p}_label_stats"] = bundle.label_stats
            print(f"{p}: dev {out[f'{p}_dev_last']:.4f} (best {out[f'{p}_dev_best']:.4f}); "
                  f"bundle {label_s:.0f}s {bundle.label_stats}", flush=True)
    finally:
        ray.shutdown()
    out["dev_last_delta_points"] = 100 * (out["bf16_dev_last"] - out["fp32_dev_last"])
    out["dev_best_delta_points"] = 100 * (out["bf16_dev_best"] - out["fp32_dev_best"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
