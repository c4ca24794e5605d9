"""What a trained student leaves in its MLflow run: the dev metrics of its last report
(``final_*``), its learning curve, and the student of its best report as artifacts. Searches
(one run per trial) and the report (one run per trained student) log the same way."""
from __future__ import annotations

import json
from pathlib import Path

from orchestrator.runtime import tracking
from orchestrator.training import checkpoint as ckpt


def log_final_metrics(client, run_id: str, last: dict) -> None:
    """``final_<metric>``: each dev metric's value at the trial's last report."""
    tracking.log_metrics(client, run_id, {
        f"final_{k}": float(v) for k, v in last.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
        and not k.startswith("final_") and is_dev_metric(k)})


def is_dev_metric(key: str) -> bool:
    """Dev metrics of a trial's report: ``dev_*``/``best_dev_*`` and, for MKD, each task's own
    (``sst2_accuracy``, ``stsb_pearson``, ``mrpc_score``, ...); not losses or timings."""
    from tasks.registry import KNOWN_METRICS

    return key.startswith(("dev_", "best_dev")) or key.endswith(
        tuple(f"_{m}" for m in (*KNOWN_METRICS, "score")))


def log_student(client, run_id: str, d: Path) -> None:
    """The student of a checkpoint directory as artifacts: weights, config, vocabulary/tokenizer."""
    for f in ckpt.student_files(d):
        client.log_artifact(run_id, str(f), "student")
    if (d / ckpt.TOKENIZER).is_dir():
        client.log_artifacts(run_id, str(d / ckpt.TOKENIZER), f"student/{ckpt.TOKENIZER}")


def log_learning_curve(client, run_id: str) -> None:
    """Dev score and train loss per epoch, from the history the workers logged to MLflow."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def last_per_step(key: str) -> dict[int, float]:
        """A resumed run logs again the reports made after its checkpoint: the last one counts."""
        return {m.step: m.value for m in sorted(client.get_metric_history(run_id, key),
                                                key=lambda m: m.timestamp)}

    # x: the epoch each report ended at (fractional with several evaluations per epoch)
    epoch = last_per_step("epoch")
    score = sorted((epoch.get(k, k), v) for k, v in last_per_step("dev_score").items())
    loss = sorted((epoch.get(k, k), v) for k, v in last_per_step("train_loss").items())
    if not score:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(*zip(*score), "o-", label="dev score")
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev score")
    if loss:
        ax2 = ax.twinx()
        ax2.plot(*zip(*loss), "s--", color="tab:red", label="train loss")
        ax2.set_ylabel("train loss")
    log_figure(client, run_id, fig, "learning_curve.png")


def log_figure(client, run_id: str, fig, name: str) -> None:
    import tempfile

    import matplotlib.pyplot as plt

    fig.tight_layout()
    with tempfile.TemporaryDirectory() as d:
        fig.savefig(Path(d) / name, dpi=100)
        client.log_artifact(run_id, str(Path(d) / name))
    plt.close(fig)


def log_checkpoint_dirs(client, run_id: str, latest: Path | None, best: Path | None) -> None:
    """All of it, from two checkpoint directories of the run (local copies): the last
    report's for the final metrics, the best report's for the student; the learning curve from
    the metrics the workers logged."""
    log_final_metrics(client, run_id, json.loads((latest / ckpt.METRICS).read_text())
                      if latest else {})
    log_learning_curve(client, run_id)
    if best is not None:
        log_student(client, run_id, best)
