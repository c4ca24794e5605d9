"""Typed configuration for every stage, and the one place that resolves paths.

A preset YAML (``search_spaces/*.yaml``) fills an :class:`ExperimentConfig`; CLI ``--set a.b=v``
flags override it; each run logs the resolved config. Unknown keys are errors that name the key.
A built config never changes (frozen dataclasses): a config that differs in some values is a new
one, from :func:`with_values` (values as given) or :func:`with_overrides` (coerced and validated).

``ExperimentConfig`` composes the sections: ``data`` (:class:`tasks.config.DataConfig`) and
``student`` (:class:`students.config.StudentConfig`) belong to the packages that read them, the
others are declared here; the field kit (``knob``, ``section``, ``ConfigError``, ``set_path``,
``with_values``) is :mod:`knobs`. All of those names are importable from here too.
:func:`load_space` and :func:`apply_sample` are ``search_spaces.loader``'s, checked against and
built into this config.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from knobs import ConfigError, knob, section, set_path, with_values
from search_spaces import loader as _spaces
from students.config import StudentConfig
from students.losses import KINDS as LOSSES
from students.registry import student_kind
from tasks.config import DataConfig

ASSETS_ENV = "DISTILLRAY_ASSETS"
# the values of pool.precision, teacher.precision and train.precision
# (orchestrator.runtime.precision resolves them for a device)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# the teacher.per_task entry of the multi-task teacher (no GLUE task has this name)
MULTITASK_ENTRY = "multitask"


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher's base model and its fine-tuning."""
    model: str = knob("bert-base-uncased", "Hub name, local Hugging Face model dir, or "
                      "\"random:tiny\" (a tiny random-weight BERT for tests and smoke runs). "
                      "With local assets, the default becomes the local MiniLM-L6.")
    epochs: float = knob(3.0, "Fine-tuning epochs (fractions allowed).")
    lr: float = knob(2e-5, "Fine-tuning learning rate (AdamW, linear warmup and decay).")
    batch_size: int = knob(32, "Fine-tuning batch size.")
    max_length: int = knob(128, "Truncation length in wordpieces, for fine-tuning and labeling.")
    max_train_examples: int | None = knob(None, "Fine-tune on a seeded subset of this many "
                                          "training examples; null: all.")
    weight_decay: float = knob(0.01, "AdamW weight decay.")
    warmup_ratio: float = knob(0.1, "Share of the steps with a linear learning-rate warmup.")
    seed: int = knob(0, "Seed of the head's initialization, the subset and the batch order.")
    multitask: bool = knob(False, "MKD: one teacher with a head per task, refined on all tasks "
                           "at once.")
    precision: str = knob("fp32", "Fine-tuning and dev evaluation under autocast: auto | fp32 | "
                          "bf16. auto: bf16 on a CPU with native bf16 (avx512_bf16 / amx_bf16), "
                          "else fp32. Part of the teacher's cache key unless it resolves to fp32.")
    per_task: dict[str, dict[str, Any]] = knob({}, "Settings for one task's teacher that replace "
                                                "the ones above, e.g. {rte: {epochs: 10}} "
                                                "(epochs, lr, batch_size, weight_decay, "
                                                "warmup_ratio, max_train_examples, seed). The "
                                                "entry `multitask` holds the multi-task "
                                                "teacher's own, e.g. {multitask: {epochs: 2}}.")
    mixture_tau: float = knob(1.0, "Multi-task teacher: each step's task is drawn with "
                              "probability proportional to its training-set size ** mixture_tau "
                              "(1: proportional to size; below 1 draws small tasks more often). "
                              "Single-task teachers ignore it.")
    refine_epochs: float = knob(0.0, "Multi-task teacher: after the mixture, fine-tune a copy "
                                "per task (shared encoder + that task's head) for this many "
                                "epochs with that task's settings, keeping its best epoch on "
                                "dev (MT-DNN / MKD); the refined copies then label. 0: the "
                                "multi-task heads label.")
    keep_best_epoch: bool = knob(True, "Evaluate on dev after every epoch and keep the best "
                                 "epoch's weights (multi-task: the best mean score).")
    checkpoint_minutes: float = knob(10.0, "Write a resumable fine-tuning checkpoint at least "
                                     "this often (and after every epoch); a killed run resumes "
                                     "from it.")

    def for_task(self, task: str) -> "TeacherConfig":
        """The settings one task's teacher trains with: ``per_task[task]`` over the shared ones
        (``task`` = :data:`MULTITASK_ENTRY`: the multi-task teacher's)."""
        return dataclasses.replace(self, **self.per_task.get(task, {}), per_task={})


@dataclass(frozen=True)
class PoolConfig:
    """The teacher actors that label transfer sets."""
    num_actors: int = knob(1, "Teacher actors in the pool.")
    cpus_per_actor: float = knob(0.5, "CPUs each actor holds (fractions allowed).")
    gpus_per_actor: float = knob(0.0, "GPUs each actor holds; > 0 places actors on GPU nodes.")
    resources_per_actor: dict[str, float] = knob({}, "Custom Ray resources per actor, e.g. "
                                                 "{teacher_gpu: 1}.")
    torch_threads: int | None = knob(None, "Torch threads per actor; null: match the CPU share "
                                     "(at least 1).")
    token_budget: int | None = knob(None, "Padded tokens per inference batch (batches are "
                                    "grouped by length); null: 2048 on CPU (cache-sized "
                                    "batches), 16384 on GPU.")
    max_batch_size: int = knob(256, "Most texts in one inference batch.")
    precision: str = knob("auto", "Labeling (bulk and on demand) and teacher evaluation: auto | "
                          "fp32 | bf16 | fp16. auto: bf16 on a CPU with native bf16 (avx512_bf16 "
                          "/ amx_bf16), bf16 or else fp16 on a GPU, fp32 otherwise; fp16 is "
                          "refused on CPUs. Replaces half_precision_on_gpu (true: auto, false: "
                          "fp32).")
    fidelity_threshold: float = knob(0.995, "Reduced-precision labels must agree with fp32 labels "
                                     "(argmax) on at least this share of a fixed sample, else "
                                     "the pool labels in fp32; checked once per teacher and "
                                     "precision, the verdict kept beside the cache.")
    fidelity_sample: int = knob(512, "Texts in the fidelity gate's sample (the first ones the "
                                "teacher labels).")
    probe: bool = knob(True, "On a CPU in reduced precision: at pool start, time the labeling "
                       "settings (attention kernel, weight casting, and token budget and threads "
                       "where unset) and keep the fastest that passes fidelity_threshold (a "
                       "candidate must beat the default by over 5%); once per machine and "
                       "teacher.")


@dataclass(frozen=True)
class AugmentConfig:
    """Tang et al. (2019) augmentation of the transfer set."""
    enabled: bool = knob(False, "Augment the training set; the teacher labels the result and the "
                         "student learns from it.")
    p_mask: float = knob(0.1, "Per word: probability of the teacher's mask token.")
    p_pos: float = knob(0.1, "Per word: probability of another training-set word with the same "
                        "POS tag. p_mask + p_pos <= 1.")
    p_ng: float = knob(0.25, "Per sample: probability of keeping only a random n-gram.")
    n_iter: int | None = knob(None, "Samples per example; null: 20 for single sentences, 10 for "
                              "pairs (Tang et al.).")
    pair_mode: str = knob("cycle", "Pairs: cycle (first / second / both sentences in turn, as in "
                          "the paper) | both (both every time).")
    max_ngram: int = knob(5, "Longest n-gram for p_ng (n in 1..max_ngram).")
    max_words: int = knob(256, "Longer texts are skipped and counted.")
    seed: int = knob(0, "Seed; with the example's id it fixes every sample.")
    nltk_data: str | None = knob(None, "NLTK data dir for the POS tagger; null: $NLTK_DATA or "
                                 "the local assets.")
    num_workers: int = knob(1, "Ray workers that augment in parallel; 1: inline (the output is "
                            "the same either way).")
    chunk_size: int = knob(2000, "Examples per worker task (does not change the output).")
    max_examples: int | None = knob(None, "Cap on the transfer set after deduplication (a "
                                    "seeded, deterministic subset); null: no cap.")


TEACHER_EMBEDDINGS = "teacher"  # student.embeddings: vectors from the teacher's input embeddings

SOFT_LABEL_MODES = ("precomputed", "on_demand")


@dataclass(frozen=True)
class TrainConfig:
    """Student training (Ray Train) and the distillation loss."""
    epochs: int = knob(3, "Training epochs.")
    batch_size: int = knob(64, "Batch size (per worker).")
    lr: float = knob(1e-3, "Learning rate.")
    weight_decay: float = knob(0.0, "Weight decay.")
    loss: str = knob("mse", "mse (on teacher logits) | kl (on softened distributions) | ce "
                     "(gold labels only, no teacher).")
    alpha: float = knob(0.0, "Weight of gold-label cross-entropy mixed into the distillation "
                        "loss, in [0, 1].")
    temperature: float = knob(1.0, "Softmax temperature of loss=kl.")
    grad_clip: float = knob(5.0, "Gradient norm clip.")
    num_workers: int = knob(1, "Ray Train workers per student; 0: Ray Train's local mode, the "
                            "student trains in the caller's own process: a search's Tune "
                            "trial, or the report's driver (no controller or worker actors to "
                            "start for each student; no DDP).")
    cpus_per_worker: float = knob(1.0, "CPUs per worker (with num_workers=0: the trial's "
                                  "training share).")
    use_gpu: bool = knob(False, "Train students on a GPU.")
    precision: str = knob("fp32", "Student forward passes and losses under autocast: auto | fp32 "
                          "| bf16 | fp16 (GPU only); weights, gradients, the optimizer and dev "
                          "evaluation stay fp32. auto: bf16 on a CPU with native bf16, else "
                          "fp32. Part of a report cell's key unless it resolves to fp32.")
    torch_threads: int | None = knob(None, "Torch threads per worker; null: cpus_per_worker "
                                     "(at least 1).")
    patience: int | None = knob(None, "Stop a run whose dev score has not improved for this "
                                "many epochs; null: never.")
    min_epochs: int | None = knob(None, "Patience counts only the epochs after this many (a "
                                  "hard task's first epochs can all sit at the majority class, "
                                  "none better than the last); a report's learning-rate grid "
                                  "takes its rung there too. null: from the first epoch. Part "
                                  "of a report cell's key only when set.")
    seed: int = knob(0, "Seed of the initialization and the batch order.")
    evals_per_epoch: int = knob(1, "Evaluations (dev metrics, a report to Tune, a checkpoint) "
                                "per epoch; with more than one, early stopping can judge and "
                                "stop a trial before its first epoch ends.")
    soft_labels: str = knob("precomputed", "Where the teacher logits come from: precomputed "
                            "(the whole transfer set is labeled before training) | on_demand "
                            "(the trial asks the teacher pool for each row the first time it "
                            "is used, through the soft-label cache: a stopped trial pays only "
                            "for the labels it trained on; needs one teacher for every task).")
    mixture: str = knob("proportional", "MKD task mixture per step: proportional (to task size) "
                        "| temperature (size^mixture_tau) | uniform | weights "
                        "(mixture_weights).")
    mixture_tau: float = knob(1.0, "Exponent of mixture=temperature.")
    mixture_weights: dict[str, float] | None = knob(None, "Per-task weights of mixture=weights, "
                                                    "e.g. {sst2: 2, mrpc: 1}.")
    steps_per_epoch: int | None = knob(None, "Steps per epoch; null: one pass over the "
                                       "training data (summed over tasks).")
    finetune_epochs: int = knob(0, "MKD stage 2: epochs of per-task fine-tuning of a copy of "
                                "the joint student.")


@dataclass(frozen=True)
class SearchConfig:
    """The Ray Tune search: searcher, early stopping and resources."""
    name: str = knob("search", "Search name: the MLflow parent run and the Tune experiment; "
                     "running a name again resumes it.")
    num_samples: int = knob(4, "Trials.")
    max_concurrent: int = knob(1, "Trials at once.")
    metric: str = knob("dev_score", "The score the search ranks by.")
    mode: str = knob("max", "max | min, for `metric`.")
    objectives: list[str] = knob([], "Several objectives as metric:mode, the first being "
                                 "metric:mode, e.g. [dev_score:max, latency_ms:min]: the "
                                 "search reports a Pareto front.")
    scheduler: str = knob("asha", "Early stopping: asha (by the score) | pareto_asha (also keeps "
                          "each rung's objectives front; needs two objectives) | none.")
    grace_period: int = knob(1, "The first early-stopping rung, in reports "
                             "(train.evals_per_epoch per epoch).")
    reduction_factor: int = knob(2, "ASHA keeps the top 1/reduction_factor at each rung.")
    min_score: float | None = knob(None, "The score a trial must beat to be kept for its place "
                                   "on a rung's front (pareto_asha) and to be listed on the "
                                   "search's Pareto front; null: the dev_score of always "
                                   "predicting the majority class (when the score is "
                                   "dev_score).")
    startup_trials: int = knob(10, "The sampler's random draws before TPE models the results "
                               "(Optuna's default).")
    startup_order: str = knob("cheapest_first", "Order of those draws: cheapest_first "
                              "(estimated training work: the first trial at a rung always goes "
                              "on, so let that be a cheap one) | drawn.")
    startup_rung: str = knob("asynchronous", "How those draws meet the first rung "
                             "(pareto_asha): asynchronous (each judged against the draws that "
                             "reached it before; the first always goes on) | synchronous (each "
                             "pauses there until every draw has reached it; then the kept ones "
                             "resume and the rest stop).")
    max_failures: int = knob(1, "Tune retries of a failed trial (from its last checkpoint).")
    trial_cpus: float = knob(0.01, "CPUs of the Tune trial itself, beside its Train workers "
                             "(with train.num_workers=0 the trial holds "
                             "train.cpus_per_worker instead).")
    storage_path: str | None = knob(None, "Tune results and checkpoints (a path or s3://...); "
                                    "null: <work_root>/tune.")
    register_model: str | None = knob(None, "MLflow Model Registry name for the best student; "
                                      "null: not registered.")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow."""
    uri: str | None = knob(None, "Tracking URI; null: $MLFLOW_TRACKING_URI or "
                           "sqlite:///mlflow.db.")
    experiment: str = knob("distillray", "MLflow experiment name.")
    artifact_location: str | None = knob(None, "Artifact store of a new experiment; null: an "
                                         "http server's own, else <work_root>/mlartifacts.")


@dataclass(frozen=True)
class ExperimentConfig:
    """One run: the sections below, filled from a preset and `--set` overrides."""
    name: str = knob("experiment", "A label for the config, logged with it; a search is named "
                     "by search.name.")
    tasks: list[str] = knob([], "MKD: several tasks; empty: [data.task].")
    data: DataConfig = section(DataConfig, "Data.")
    teacher: TeacherConfig = section(TeacherConfig, "Teacher.")
    pool: PoolConfig = section(PoolConfig, "Teacher pool.")
    augment: AugmentConfig = section(AugmentConfig, "Augmentation.")
    student: StudentConfig = section(StudentConfig, "Student.")
    train: TrainConfig = section(TrainConfig, "Student training.")
    search: SearchConfig = section(SearchConfig, "Search.")
    tracking: TrackingConfig = section(TrackingConfig, "Tracking.")
    work_root: str = knob(".distillray", "Where cached results live (teachers, transfer sets, "
                          "soft labels, bundles): a path every node sees on a cluster.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# building from dicts, with errors that name the key


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def from_dict(cls: type, values: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s}; known keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for k, v in values.items():
        kwargs[k] = _coerce(v, hints[k], f"{where}.{k}" if where else k)
    return cls(**kwargs)


DEPRECATED_HALF = "half_precision_on_gpu"


def _map_deprecated(values: dict[str, Any], overrides: dict[str, Any]) -> tuple[dict, dict]:
    """``pool.half_precision_on_gpu`` (before ``pool.precision``): true -> auto (half precision
    on GPUs, bf16 also on CPUs with native bf16, behind the fidelity gate), false -> fp32; a
    ``pool.precision`` given beside it wins. Logs a deprecation warning."""
    import logging

    pool = values.get("pool") if isinstance(values.get("pool"), dict) else None
    old = None
    if pool is not None and DEPRECATED_HALF in pool:
        pool = dict(pool)
        old = pool.pop(DEPRECATED_HALF)
        values = {**values, "pool": pool}
    key = f"pool.{DEPRECATED_HALF}"
    if key in overrides:
        overrides = dict(overrides)
        old = overrides.pop(key)
    if old is None:
        return values, overrides
    half = _coerce(old, bool, key)
    mapped = "auto" if half else "fp32"
    given = overrides.get("pool.precision", (pool or {}).get("precision"))
    logging.getLogger(__name__).warning(
        "%s is deprecated: use pool.precision (auto | fp32 | bf16 | fp16); %s", key,
        f"ignored beside pool.precision={given}" if given is not None
        else f"read as pool.precision={mapped}")
    if given is None:
        overrides = {**overrides, "pool.precision": mapped}
    return values, overrides


def build_config(values: dict[str, Any], overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Defaults <- ``values`` <- ``overrides`` (dotted keys), validated."""
    values, overrides = _map_deprecated(values, dict(overrides or {}))
    base = ExperimentConfig().to_dict()
    merged = _deep_merge(base, values, "")
    for k, v in (overrides or {}).items():
        set_path(merged, k, v)
    cfg = from_dict(ExperimentConfig, merged)
    validate(cfg)
    return cfg


def with_overrides(cfg: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """A new config: ``cfg`` with ``overrides`` (dotted keys), coerced and validated as
    :func:`build_config` does; ``cfg`` itself is left as it is."""
    return build_config(cfg.to_dict(), overrides)


class ExperimentSchema:
    """The experiment config as ``search_spaces.loader`` sees it: a preset is checked against it
    and a trial's config built from it (the loader cannot import this package)."""

    def defaults(self) -> dict[str, Any]:
        return ExperimentConfig().to_dict()

    def build(self, values: dict[str, Any],
              overrides: dict[str, Any] | None = None) -> ExperimentConfig:
        return build_config(values, overrides)


SCHEMA = ExperimentSchema()


def load_space(name_or_path: str) -> _spaces.SearchSpace:
    """A preset (name or YAML path) as a ``search_spaces.loader.SearchSpace``, every value and
    parameter checked against :class:`ExperimentConfig`."""
    return _spaces.load_space(name_or_path, SCHEMA)


def trial_config(run: ExperimentConfig, space: _spaces.SearchSpace,
                 sample: dict[str, Any]) -> ExperimentConfig:
    """A trial's config: the search's own config (built once from preset and overrides) with the
    values Tune sampled, as a new config."""
    return with_overrides(run, _spaces.sampled_values(space, sample))


def apply_sample(space: _spaces.SearchSpace, sample: dict[str, Any],
                 overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """A trial's config: the preset's config and search settings, ``overrides``, then the
    values Tune sampled (``search_spaces.loader.apply_sample``)."""
    return _spaces.apply_sample(space, sample, overrides, schema=SCHEMA)


def _deep_merge(base: dict[str, Any], new: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        key = f"{where}.{k}" if where else k
        if k not in base:
            raise ConfigError(f"unknown key {key}; known keys here: {', '.join(sorted(base))}")
        if isinstance(base[k], dict) and isinstance(v, dict) and base[k] and k not in (
            "resources_per_actor", "mixture_weights"):
            out[k] = _deep_merge(base[k], v, key)
        else:
            out[k] = v
    return out


NAME_LIST_KEYS = ("data.label_names", "data.text_columns", "tasks")


def parse_override(text: str) -> tuple[str, Any]:
    """``train.lr=3e-4`` -> ("train.lr", 0.0003); values are read as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    k, v = text.split("=", 1)
    if k.strip() in NAME_LIST_KEYS:  # names stay text: [no, yes] is not [false, true]
        value = yaml.load(v, Loader=yaml.BaseLoader)
        return k.strip(), None if value in ("null", "~", "") else value
    value = yaml.safe_load(v)
    if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return k.strip(), value


def one_teacher(cfg: ExperimentConfig) -> bool:
    """Every task is labeled by one teacher: a single task, or a multi-task (MKD) teacher with a
    head per task (not refined per task). A search then runs one teacher pool that serves all
    its trials."""
    return len(cfg.tasks or [cfg.data.task]) == 1 or (cfg.teacher.multitask
                                                      and not cfg.teacher.refine_epochs)


def validate(cfg: ExperimentConfig) -> None:
    a = cfg.augment
    for name in ("p_mask", "p_pos", "p_ng"):
        v = getattr(a, name)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"augment.{name}={v} is outside [0, 1]")
    if a.p_mask + a.p_pos > 1.0 + 1e-12:
        raise ConfigError(f"augment.p_mask + augment.p_pos = {a.p_mask + a.p_pos:g} exceeds 1")
    if a.n_iter is not None and a.n_iter < 1:
        raise ConfigError(f"augment.n_iter={a.n_iter} must be at least 1")
    if a.pair_mode not in ("cycle", "both"):
        raise ConfigError(f"augment.pair_mode={a.pair_mode!r}: choose cycle or both")
    if a.max_ngram < 1:
        raise ConfigError(f"augment.max_ngram={a.max_ngram} must be at least 1")
    t = cfg.train
    if t.loss not in LOSSES:
        raise ConfigError(f"train.loss={t.loss!r}: choose {', '.join(LOSSES)}")
    if not 0.0 <= t.alpha <= 1.0:
        raise ConfigError(f"train.alpha={t.alpha} is outside [0, 1]")
    if t.temperature <= 0:
        raise ConfigError(f"train.temperature={t.temperature} must be > 0")
    if t.epochs < 1 or t.batch_size < 1 or t.lr <= 0:
        raise ConfigError("train.epochs and train.batch_size must be >= 1 and train.lr > 0")
    if t.num_workers < 0:
        raise ConfigError(f"train.num_workers={t.num_workers} must be >= 0 (0: train in the "
                          "trial's own process)")
    if t.mixture not in ("proportional", "temperature", "uniform", "weights"):
        raise ConfigError(f"train.mixture={t.mixture!r}: choose proportional, temperature, uniform or weights")
    if t.mixture_tau <= 0:
        raise ConfigError(f"train.mixture_tau={t.mixture_tau} must be > 0")
    if t.mixture_weights is not None:
        neg = {k: w for k, w in t.mixture_weights.items() if w < 0}
        if neg:
            raise ConfigError(f"train.mixture_weights must be >= 0; got {neg}")
        if not sum(t.mixture_weights.values()) > 0:
            raise ConfigError("train.mixture_weights are all zero: give at least one task a "
                              "positive weight")
    if t.finetune_epochs < 0:
        raise ConfigError(f"train.finetune_epochs={t.finetune_epochs} must be >= 0")
    if t.min_epochs is not None and not 1 <= t.min_epochs <= t.epochs:
        raise ConfigError(f"train.min_epochs={t.min_epochs} must lie in [1, train.epochs="
                          f"{t.epochs}] (null: patience counts from the first epoch)")
    if t.evals_per_epoch < 1:
        raise ConfigError(f"train.evals_per_epoch={t.evals_per_epoch} must be at least 1")
    if t.soft_labels not in SOFT_LABEL_MODES:
        raise ConfigError(f"train.soft_labels={t.soft_labels!r}: choose "
                          f"{' or '.join(SOFT_LABEL_MODES)}")
    if t.soft_labels == "on_demand" and not one_teacher(cfg):
        raise ConfigError(
            f"train.soft_labels=on_demand keeps one teacher pool up while the student trains, but "
            f"tasks {', '.join(cfg.tasks)} each have their own teacher: set teacher.multitask=true "
            "(one teacher, a head per task) or train.soft_labels=precomputed")
    s = cfg.student
    try:
        kind = student_kind(s.arch)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if s.channels not in ("single", "multi"):
        raise ConfigError(f"student.channels={s.channels!r}: choose single or multi")
    if not 0.0 <= s.dropout < 1.0:
        raise ConfigError(f"student.dropout={s.dropout} is outside [0, 1)")
    if s.embeddings == TEACHER_EMBEDDINGS and kind.words \
            and cfg.teacher.model.startswith("random:"):
        raise ConfigError(
            f"student.embeddings=teacher reads the input embeddings of the pre-trained "
            f"teacher.model, but teacher.model={cfg.teacher.model} is a random BERT built afresh "
            "for each task: point teacher.model at a Hugging Face model dir (or hub name), or "
            "set student.embeddings to null or a GloVe/word2vec file")
    init = s.init_from_teacher.replace(" ", "")
    if init not in ("none", "first", "even") and not all(
            x.isdigit() for x in init.split(",")):
        raise ConfigError(f"student.init_from_teacher={s.init_from_teacher!r}: choose none, "
                          "first, even or teacher layer indices like '0,2,4'")
    if len(set(cfg.tasks)) != len(cfg.tasks):
        dup = sorted({x for x in cfg.tasks if cfg.tasks.count(x) > 1})
        raise ConfigError(f"tasks lists {', '.join(dup)} more than once")
    _validate_search(cfg.search)
    if cfg.pool.token_budget is not None and cfg.pool.token_budget < 1:
        raise ConfigError(f"pool.token_budget={cfg.pool.token_budget} must be at least 1 "
                          "(or null for the device's default)")
    if cfg.pool.num_actors < 1 or cfg.pool.cpus_per_actor < 0:
        raise ConfigError("pool.num_actors must be >= 1 and pool.cpus_per_actor >= 0")
    _validate_precision(cfg)
    _validate_teacher(cfg.teacher)


PER_TASK_TEACHER_KEYS = ("epochs", "lr", "batch_size", "weight_decay", "warmup_ratio",
                         "max_train_examples", "seed", "mixture_tau")


def _validate_teacher(t: TeacherConfig) -> None:
    if not t.checkpoint_minutes > 0:
        raise ConfigError(f"teacher.checkpoint_minutes={t.checkpoint_minutes} must be > 0")
    if not t.refine_epochs >= 0:
        raise ConfigError(f"teacher.refine_epochs={t.refine_epochs} must be >= 0 (0: no per-task "
                          "refinement of the multi-task teacher)")
    if not t.mixture_tau > 0:
        raise ConfigError(f"teacher.mixture_tau={t.mixture_tau} must be > 0 (1: tasks drawn in "
                          "proportion to their sizes)")
    if not isinstance(t.per_task, dict):
        raise ConfigError(f"teacher.per_task must map task names to settings, got {t.per_task!r}")
    for task, over in t.per_task.items():
        if not isinstance(over, dict):
            raise ConfigError(f"teacher.per_task.{task} must be a mapping like {{epochs: 10}}, "
                              f"got {over!r}")
        bad = sorted(set(over) - set(PER_TASK_TEACHER_KEYS))
        if bad:
            raise ConfigError(f"teacher.per_task.{task}: {', '.join(bad)} cannot differ per task; "
                              f"choose from {', '.join(PER_TASK_TEACHER_KEYS)}")
        for k, v in over.items():
            ok = (v is None and k == "max_train_examples") or (
                isinstance(v, (int, float)) and not isinstance(v, bool)
                and (k not in ("batch_size", "seed", "max_train_examples") or isinstance(v, int)))
            if not ok or (k in ("epochs", "lr", "batch_size", "mixture_tau") and v <= 0):
                raise ConfigError(f"teacher.per_task.{task}.{k}={v!r} is not a valid {k}")


def _validate_precision(cfg: ExperimentConfig) -> None:
    """Names, the gate's range, and fp16 without a GPU: refused here, before any work."""
    p = cfg.pool
    for where, value in (("pool.precision", p.precision), ("teacher.precision",
                                                           cfg.teacher.precision),
                         ("train.precision", cfg.train.precision)):
        if value not in PRECISIONS:
            raise ConfigError(f"{where}={value!r}: choose {', '.join(PRECISIONS)}")
    if p.precision == "fp16" and p.gpus_per_actor <= 0:
        raise ConfigError("pool.precision=fp16 needs GPU teacher actors (pool.gpus_per_actor > 0):"
                          " fp16 cannot run on a CPU; use pool.precision=bf16 or auto")
    if cfg.train.precision == "fp16" and not cfg.train.use_gpu:
        raise ConfigError("train.precision=fp16 needs GPU workers (train.use_gpu=true): fp16 "
                          "cannot run on a CPU; use train.precision=bf16 or auto")
    if cfg.teacher.precision == "fp16":
        raise ConfigError("teacher.precision=fp16: teacher fine-tuning runs on the CPU, where "
                          "fp16 cannot run; use teacher.precision=bf16 or auto")
    if not 0.0 <= p.fidelity_threshold <= 1.0:
        raise ConfigError(f"pool.fidelity_threshold={p.fidelity_threshold} is outside [0, 1]")
    if p.fidelity_sample < 1:
        raise ConfigError(f"pool.fidelity_sample={p.fidelity_sample} must be at least 1")


SCHEDULERS = ("asha", "pareto_asha", "none")
STARTUP_ORDERS = ("cheapest_first", "drawn")
STARTUP_RUNG_MODES = ("asynchronous", "synchronous")


def objectives(s: SearchConfig) -> list[tuple[str, str]]:
    """``search.objectives`` as (metric, mode) pairs; just (search.metric, search.mode) when
    none are given. Validated by :func:`validate`."""
    return [tuple(o.split(":")) for o in s.objectives] or [(s.metric, s.mode)]


def _validate_search(s: SearchConfig) -> None:
    if s.mode not in ("max", "min"):
        raise ConfigError(f"search.mode={s.mode!r}: choose max or min")
    if s.scheduler not in SCHEDULERS:
        raise ConfigError(f"search.scheduler={s.scheduler!r}: choose {', '.join(SCHEDULERS)}")
    for o in s.objectives:
        name, _, mode = str(o).partition(":")
        if not name or mode not in ("max", "min"):
            raise ConfigError(f"search.objectives: {o!r} is not 'metric:max' or 'metric:min'")
    if s.objectives and s.objectives[0] != f"{s.metric}:{s.mode}":
        raise ConfigError(f"search.objectives starts with {s.objectives[0]!r} but search.metric "
                          f"and search.mode say {s.metric}:{s.mode}: the first objective is the "
                          "score the search ranks by")
    if s.scheduler == "pareto_asha" and len(s.objectives) != 2:
        raise ConfigError("search.scheduler=pareto_asha keeps each rung's (score, cost) front: "
                          "give two search.objectives, e.g. [dev_score:max, latency_ms:min] "
                          f"(got {s.objectives})")
    if s.startup_order not in STARTUP_ORDERS:
        raise ConfigError(f"search.startup_order={s.startup_order!r}: choose "
                          f"{', '.join(STARTUP_ORDERS)}")
    if s.startup_rung not in STARTUP_RUNG_MODES:
        raise ConfigError(f"search.startup_rung={s.startup_rung!r}: choose "
                          f"{', '.join(STARTUP_RUNG_MODES)}")
    if s.startup_rung == "synchronous" and s.scheduler == "asha":
        # (with scheduler=none there are no rungs: the setting has nothing to act on)
        raise ConfigError("search.startup_rung=synchronous needs search.scheduler=pareto_asha "
                          f"(got {s.scheduler!r}); or set search.startup_rung=asynchronous")
    if s.startup_trials < 0:
        raise ConfigError(f"search.startup_trials={s.startup_trials} must be >= 0")
    if s.scheduler != "none" and (s.grace_period < 1 or s.reduction_factor < 2):
        raise ConfigError(f"search.grace_period={s.grace_period} must be >= 1 and "
                          f"search.reduction_factor={s.reduction_factor} >= 2")


# ---------------------------------------------------------------------------------------------
# paths: one place that turns hub defaults into local files when assets are present

def find_assets(explicit: str | None = None) -> Path | None:
    """The local assets dir: explicit arg, then $DISTILLRAY_ASSETS, then ../shared/assets
    beside the repository (or the working directory). None when absent."""
    candidates: list[Path] = []
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_dir():
            raise ConfigError(f"assets dir {p} does not exist")
        return p.resolve()
    if os.environ.get(ASSETS_ENV):
        p = Path(os.environ[ASSETS_ENV]).expanduser()
        if not p.is_dir():
            raise ConfigError(f"${ASSETS_ENV}={p} does not exist")
        return p.resolve()
    repo = Path(__file__).resolve().parent.parent
    candidates += [repo.parent / "shared" / "assets", Path.cwd().parent / "shared" / "assets"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def local_asset_values(cfg: ExperimentConfig, assets: Path) -> dict[str, Any]:
    """The values that point ``cfg``'s hub defaults at the local copies in ``assets`` (only
    where still at defaults), as dotted keys: the GLUE TSVs, the MiniLM-L6 teacher, the NLTK data
    and the GloVe file for ``student.embeddings=glove``."""
    d = ExperimentConfig()
    out: dict[str, Any] = {}
    if cfg.data.source in ("auto", "glue_dir") and cfg.data.glue_dir is None:
        out["data.glue_dir"] = str(assets / "glue")
    if cfg.teacher.model == d.teacher.model:
        out["teacher.model"] = str(assets / "models" / "minilm-l6-uncased")
    if cfg.augment.nltk_data is None and (assets / "nltk_data").is_dir():
        out["augment.nltk_data"] = str(assets / "nltk_data")
    embeddings = resolve_embeddings(cfg.student.embeddings, assets)
    if embeddings != cfg.student.embeddings:
        out["student.embeddings"] = embeddings
    return out


def use_local_assets(cfg: ExperimentConfig, assets: Path) -> ExperimentConfig:
    """``cfg`` with its hub defaults pointed at the local copies in ``assets``
    (:func:`local_asset_values`)."""
    return with_values(cfg, local_asset_values(cfg, assets))


def resolved_embeddings(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``student.embeddings=glove`` (e.g. sampled by a search) as the GloVe file it
    names: what a bundle is built and keyed with, and what its student records."""
    path = resolve_embeddings(cfg.student.embeddings)
    return cfg if path == cfg.student.embeddings else with_values(cfg, {"student.embeddings": path})


def resolve_embeddings(value: str | None, assets: Path | None = None) -> str | None:
    """``"glove"`` names the local GloVe subset in the assets dir; paths and ``"teacher"`` (the
    teacher's input embeddings, :mod:`orchestrator.teachers.teacher_vectors`) pass through."""
    if value != "glove":
        return value
    assets = assets or find_assets()
    path = assets / "embeddings" / "glove.6B.50d.glue.txt" if assets else None
    if path is None or not path.is_file():
        raise ConfigError("student.embeddings=glove needs the local assets (embeddings/"
                          "glove.6B.50d.glue.txt); pass student.embeddings=<GloVe .txt path> or null")
    return str(path)
