"""Typed configuration for every stage, and the one place that resolves paths.

A preset YAML (``search_spaces/*.yaml``) fills an :class:`ExperimentConfig`; CLI ``--set a.b=v``
flags override it; each run logs the resolved config. Unknown keys are errors that name the key.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ASSETS_ENV = "DISTILLRAY_ASSETS"


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


@dataclass
class DataConfig:
    task: str = "sst2"
    source: str = "auto"  # auto | glue_dir | hub | custom | generated
    glue_dir: str | None = None  # GLUE TSV root (holds SST-2/, MRPC/, ...)
    hub_name: str = "nyu-mll/glue"
    train_file: str | None = None  # custom CSV/JSONL
    dev_file: str | None = None
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    label_column: str = "label"
    label_names: list[str] | None = None  # custom classification labels; None + regression=False -> inferred
    regression: bool = False
    max_train_examples: int | None = None
    max_dev_examples: int | None = None
    seed: int = 0


@dataclass
class TeacherConfig:
    model: str = "bert-base-uncased"  # hub name, local HF dir, or "random:tiny" (tests/smoke)
    epochs: float = 3.0
    lr: float = 2e-5
    batch_size: int = 32
    max_length: int = 128
    max_train_examples: int | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0
    multitask: bool = False  # MKD: one teacher, a head per task, refined on all tasks at once


@dataclass
class PoolConfig:
    num_actors: int = 1
    cpus_per_actor: float = 0.5
    gpus_per_actor: float = 0.0  # >0 places actors on GPU nodes
    resources_per_actor: dict[str, float] = field(default_factory=dict)  # e.g. {"teacher_gpu": 1}
    torch_threads: int | None = None  # None: match the CPU share (at least 1)
    # padded tokens per inference batch; None: 2048 on CPU (cache-sized batches: ~13% faster
    # than 8192 for MiniLM-L6 on 2 cores), 16384 on GPU
    token_budget: int | None = None
    max_batch_size: int = 256
    half_precision_on_gpu: bool = True


@dataclass
class AugmentConfig:
    enabled: bool = False
    p_mask: float = 0.1
    p_pos: float = 0.1
    p_ng: float = 0.25
    n_iter: int | None = None  # None: 20 for single sentences, 10 for pairs (Tang et al.)
    pair_mode: str = "cycle"  # pairs: cycle first/second/both sentences (paper) | both
    max_ngram: int = 5
    max_words: int = 256  # longer texts are skipped and counted
    seed: int = 0
    nltk_data: str | None = None
    num_workers: int = 1
    chunk_size: int = 2000
    max_examples: int | None = None  # cap the transfer set (after dedup), deterministic


@dataclass
class StudentConfig:
    arch: str = "bilstm"  # bilstm | bcn | transformer
    embeddings: str | None = None  # GloVe/word2vec text file; None: random init
    embed_dim: int = 300  # used when embeddings is None
    trainable_embeddings: bool = True
    channels: str = "single"  # single | multi (static + trainable copy)
    hidden_size: int = 150
    num_layers: int = 1
    relu_size: int = 200
    dropout: float = 0.1
    max_length: int = 64
    vocab_min_freq: int = 1
    vocab_max_size: int | None = None
    # transformer student
    tf_layers: int = 3
    tf_hidden: int = 384
    tf_heads: int = 12
    tf_ffn: int = 1536
    init_from_teacher: str = "none"  # none | first | even | "0,2,4"
    pooling: list[str] = field(default_factory=lambda: ["max", "mean", "min", "self"])  # BCN


SOFT_LABEL_MODES = ("precomputed", "on_demand")


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "mse"  # mse | kl | ce (gold labels only)
    alpha: float = 0.0  # weight of gold-label CE mixed into the distillation loss
    temperature: float = 1.0
    grad_clip: float = 5.0
    # Ray Train workers per student; 0: Ray Train's local mode, the student trains in the Tune
    # trial's own process (no controller or worker actors to start: seconds less per trial)
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    torch_threads: int | None = None
    patience: int | None = None  # early stopping on the dev score, in epochs
    seed: int = 0
    # evaluations (dev metrics, a report to Tune, a checkpoint) per epoch: with more than one,
    # ASHA can judge -- and stop -- a trial before its first epoch ends
    evals_per_epoch: int = 1
    # where the teacher logits come from: "precomputed" (the whole transfer set is labeled
    # before training) or "on_demand" (the Train workers ask the teacher pool the first time
    # a row is used, through the soft-label cache: an early-stopped trial pays only for the
    # labels it trained on)
    soft_labels: str = "precomputed"
    # MKD
    mixture: str = "proportional"  # proportional | temperature | uniform | weights
    mixture_tau: float = 1.0
    mixture_weights: dict[str, float] | None = None
    steps_per_epoch: int | None = None
    finetune_epochs: int = 0  # MKD stage 2: per-task fine-tuning


@dataclass
class SearchConfig:
    name: str = "search"
    num_samples: int = 4
    max_concurrent: int = 1
    metric: str = "dev_score"
    mode: str = "max"
    objectives: list[str] = field(default_factory=list)  # e.g. ["dev_score:max", "latency_ms:min"]
    scheduler: str = "asha"  # asha | pareto_asha (keeps each rung's objectives front) | none
    grace_period: int = 1  # ASHA's first rung, in reports (train.evals_per_epoch per epoch)
    reduction_factor: int = 2
    # the score a trial must beat to be kept for its place on a rung's front (pareto_asha) and to
    # be listed on the search's Pareto front; None: the dev_score of a model that always predicts
    # the majority class (when the score objective is dev_score)
    min_score: float | None = None
    # the sampler's random draws before TPE models the results (Optuna's default, 10), and the
    # order they run in: cheapest_first (estimated training work; ASHA's first trial at a rung
    # always goes on, so let that be a cheap one) or drawn
    startup_trials: int = 10
    startup_order: str = "cheapest_first"
    # how those draws meet the first early-stopping rung (pareto_asha): asynchronous (each judged
    # against the draws that reached it before; the first always goes on) or synchronous (each
    # pauses there until every draw has reached it; then the kept ones resume, the rest stop)
    startup_rung: str = "asynchronous"
    max_failures: int = 1
    trial_cpus: float = 0.01
    storage_path: str | None = None  # Tune results; default <work_root>/tune
    register_model: str | None = None  # MLflow Model Registry name for the best student


@dataclass
class TrackingConfig:
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    experiment: str = "distillray"
    artifact_location: str | None = None  # default: http server's own, else <work_root>/mlartifacts


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    tasks: list[str] = field(default_factory=list)  # MKD: several tasks; empty -> [data.task]
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    work_root: str = ".distillray"

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


def set_path(cfg_dict: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, refusing keys the config does not have."""
    parts = dotted.split(".")
    node = cfg_dict
    for p in parts[:-1]:
        if p not in node or not isinstance(node[p], dict):
            raise ConfigError(f"unknown key {dotted}: no section {p!r}")
        node = node[p]
    if parts[-1] not in node:
        raise ConfigError(f"unknown key {dotted}; known keys here: {', '.join(sorted(node))}")
    node[parts[-1]] = value


def build_config(values: dict[str, Any], overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Defaults <- ``values`` <- ``overrides`` (dotted keys), validated."""
    base = ExperimentConfig().to_dict()
    merged = _deep_merge(base, values, "")
    for k, v in (overrides or {}).items():
        set_path(merged, k, v)
    cfg = from_dict(ExperimentConfig, merged)
    validate(cfg)
    return cfg


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
    head per task. A search then runs one teacher pool that serves all its trials."""
    return len(cfg.tasks or [cfg.data.task]) == 1 or cfg.teacher.multitask


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
    if t.loss not in ("mse", "kl", "ce"):
        raise ConfigError(f"train.loss={t.loss!r}: choose mse, kl or ce")
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
    if s.arch not in ("bilstm", "bcn", "transformer"):
        raise ConfigError(f"student.arch={s.arch!r}: choose bilstm, bcn or transformer")
    if s.channels not in ("single", "multi"):
        raise ConfigError(f"student.channels={s.channels!r}: choose single or multi")
    if not 0.0 <= s.dropout < 1.0:
        raise ConfigError(f"student.dropout={s.dropout} is outside [0, 1)")
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


def use_local_assets(cfg: ExperimentConfig, assets: Path) -> ExperimentConfig:
    """Point hub defaults at the local copies in ``assets`` (only where still at defaults)."""
    d = ExperimentConfig()
    if cfg.data.source in ("auto", "glue_dir") and cfg.data.glue_dir is None:
        cfg.data.glue_dir = str(assets / "glue")
    if cfg.teacher.model == d.teacher.model:
        cfg.teacher.model = str(assets / "models" / "minilm-l6-uncased")
    cfg.student.embeddings = resolve_embeddings(cfg.student.embeddings, assets)
    if cfg.augment.nltk_data is None and (assets / "nltk_data").is_dir():
        cfg.augment.nltk_data = str(assets / "nltk_data")
    return cfg


def resolve_embeddings(value: str | None, assets: Path | None = None) -> str | None:
    """``"glove"`` names the local GloVe subset in the assets dir; paths pass through."""
    if value != "glove":
        return value
    assets = assets or find_assets()
    path = assets / "embeddings" / "glove.6B.50d.glue.txt" if assets else None
    if path is None or not path.is_file():
        raise ConfigError("student.embeddings=glove needs the local assets (embeddings/"
                          "glove.6B.50d.glue.txt); pass student.embeddings=<GloVe .txt path> or null")
    return str(path)
