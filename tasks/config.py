"""The ``data`` section of a run's config: where a task's examples come from and how many are
used. :mod:`tasks.loaders` reads it; ``orchestrator.config.ExperimentConfig`` composes it with the
other sections."""
from __future__ import annotations

from dataclasses import dataclass

from knobs import knob


@dataclass(frozen=True)
class DataConfig:
    """Where the task's examples come from and how many are used."""
    task: str = knob("sst2", "The task when `tasks` is empty: a GLUE task (sst2, mrpc, rte, "
                     "cola, stsb, ...), or a name of your own for source=custom.")
    source: str = knob("auto", "auto | glue_dir | hub | custom | generated. auto: a GLUE TSV "
                       "dir when `glue_dir` is set (or found in the local assets), else the hub "
                       "dataset `hub_name`.")
    glue_dir: str | None = knob(None, "GLUE TSV root (holds SST-2/, MRPC/, ...).")
    hub_name: str = knob("nyu-mll/glue", "Hugging Face hub dataset for source=hub.")
    train_file: str | None = knob(None, "Own training file (CSV, TSV or JSONL) for "
                                  "source=custom.")
    dev_file: str | None = knob(None, "Own dev file for source=custom.")
    text_columns: list[str] = knob(["text"], "Text column(s) of a custom file: one, or two for "
                                   "sentence pairs.")
    label_column: str = knob("label", "Label column of a custom file.")
    label_names: list[str] | None = knob(None, "Class names of a custom classification task; "
                                         "null (and regression=false): inferred from the data.")
    regression: bool = knob(False, "A custom task with a real-valued target instead of classes.")
    max_train_examples: int | None = knob(None, "Cap on training examples (a seeded subset); "
                                          "null: all.")
    max_dev_examples: int | None = knob(None, "Cap on dev examples per dev split; null: all.")
    seed: int = knob(0, "Seed of the subsets (and of generated data).")
