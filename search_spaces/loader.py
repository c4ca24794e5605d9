"""Declarative search spaces: a preset YAML -> fixed config + parameters Optuna samples.

A preset file has four top-level keys::

    name: smoke                       # default search name
    config: {...}                     # fixed ExperimentConfig values (data, teacher, train, ...)
    search: {...}                     # SearchConfig values (num_samples, scheduler, ...)
    space:                            # what the search samples; keys are config paths
      train.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
      student.hidden_size: {type: choice, values: [64, 128, 256]}
      student.pooling: {type: choice, values: [[max, mean], [max]], when: {student.arch: bcn}}

Parameter types: uniform, loguniform, int (optional ``log: true``, ``step``), choice.
``when`` makes a parameter conditional: it is sampled only when the named parameters (sampled
earlier in the file) take one of the given values. Everything is checked on load; errors name the
file and key.

The loader knows the config only through a :class:`ConfigSchema` it is given (the experiment
config's is ``orchestrator.config.SCHEMA``; ``orchestrator.config.load_space`` and
``apply_sample`` pass it), so this package never imports the orchestrator.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from knobs import ConfigError, set_path

PRESET_DIR = Path(__file__).resolve().parent
TYPES = ("uniform", "loguniform", "int", "choice")
PARAM_KEYS = {"type", "low", "high", "values", "log", "step", "when"}
TOP_KEYS = {"name", "description", "config", "search", "space"}


class SearchSpaceError(ConfigError):
    pass


class ConfigSchema(Protocol):
    """The config a preset fills: its keys with their defaults, and how a config is built."""

    def defaults(self) -> dict[str, Any]:
        """Every key at its default, as nested dicts (one per section)."""

    def build(self, values: dict[str, Any], overrides: dict[str, Any] | None = None) -> Any:
        """Defaults <- ``values`` <- ``overrides`` (dotted keys), validated; raises
        :class:`ConfigError` naming the key."""


@dataclass
class Param:
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None
    log: bool = False
    step: float | None = None
    when: dict[str, list[Any]] = field(default_factory=dict)

    def candidates(self) -> list[Any]:
        """Values that probe validity: both ends of a range, or every choice."""
        return list(self.values) if self.type == "choice" else [self.low, self.high]

    def suggest(self, trial) -> Any:
        if self.type == "uniform":
            return trial.suggest_float(self.key, self.low, self.high)
        if self.type == "loguniform":
            return trial.suggest_float(self.key, self.low, self.high, log=True)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        # optuna choices must be scalars: index lists/dicts by position
        if all(isinstance(v, (str, int, float, bool)) or v is None for v in self.values):
            return trial.suggest_categorical(self.key, self.values)
        i = trial.suggest_categorical(self.key + "#", list(range(len(self.values))))
        return copy.deepcopy(self.values[i])


@dataclass
class SearchSpace:
    name: str
    path: str
    config: dict[str, Any]
    search: dict[str, Any]
    params: list[Param]
    description: str = ""

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def searches(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.keys)

    def define_by_run(self) -> "DefineByRun":
        """An Optuna define-by-run function (conditional parameters need it); picklable, so
        Tune can checkpoint the searcher for resume."""
        return DefineByRun(self.params)

    def defaults_sample(self) -> dict[str, Any]:
        """One valid assignment (first choice / low end), for dry runs and tests."""
        out: dict[str, Any] = {}
        for p in self.params:
            if all(out.get(k, _MISSING) in v for k, v in p.when.items()):
                out[p.key] = p.values[0] if p.type == "choice" else (
                    int(p.low) if p.type == "int" else p.low)
        return out

    def centre_sample(self) -> dict[str, Any]:
        """The middle of the space: the middle choice (the earlier of two), the midpoint of a
        range (geometric for log ranges, rounded down for ints). A representative trial for
        timing one full run against a search of the same space."""
        out: dict[str, Any] = {}
        for p in self.params:
            if not all(out.get(k, _MISSING) in v for k, v in p.when.items()):
                continue
            if p.type == "choice":
                out[p.key] = p.values[(len(p.values) - 1) // 2]
                continue
            log = p.type == "loguniform" or p.log
            mid = math.sqrt(p.low * p.high) if log else (p.low + p.high) / 2
            out[p.key] = int(mid) if p.type == "int" else mid
        return out

    def pinned(self, sample: dict[str, Any]) -> "SearchSpace":
        """The same space with every parameter fixed to ``sample``'s value (a one-value choice):
        a search over it runs exactly that trial through the search's own machinery. Parameters
        the sample leaves out (inactive conditionals) are dropped."""
        params = [dataclasses.replace(p, type="choice", values=[sample[p.key]], low=None,
                                      high=None, log=False, step=None)
                  for p in self.params if p.key in sample]
        return dataclasses.replace(self, params=params)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


class DefineByRun:
    """Samples each parameter whose ``when`` conditions hold, in file order."""

    def __init__(self, params: list[Param]):
        self.params = params

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for p in self.params:
            if all(chosen.get(k, _MISSING) in vals for k, vals in p.when.items()):
                chosen[p.key] = p.suggest(trial)
        return None


def preset_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    cand = PRESET_DIR / f"{name_or_path}.yaml"
    if not cand.is_file():
        known = sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
        raise SearchSpaceError(f"unknown preset {name_or_path!r}; presets: {', '.join(known)} "
                               "(or pass a path to a YAML file)")
    return cand


def load_space(name_or_path: str, schema: ConfigSchema) -> SearchSpace:
    """The preset ``name_or_path`` (a name in this folder or a YAML path), its fixed values and
    every parameter checked against ``schema``."""
    path = preset_path(name_or_path)
    if not path.is_file():
        raise SearchSpaceError(f"search space file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SearchSpaceError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SearchSpaceError(f"{path}: top level must be a mapping")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise SearchSpaceError(f"{path}: unknown top-level key {unknown[0]!r}; "
                               f"allowed: {', '.join(sorted(TOP_KEYS))}")
    config = raw.get("config") or {}
    search = raw.get("search") or {}
    space = raw.get("space") or {}
    for what, v in (("config", config), ("search", search), ("space", space)):
        if not isinstance(v, dict):
            raise SearchSpaceError(f"{path}: '{what}' must be a mapping")
    try:
        schema.build(config | {"search": search})
    except ConfigError as e:
        raise SearchSpaceError(f"{path}: {e}") from None
    params = [_parse_param(path, k, v) for k, v in space.items()]
    _check_params(path, params, config | {"search": search}, schema)
    name = str(raw.get("name") or path.stem)
    return SearchSpace(name=name, path=str(path), config=config, search=search, params=params,
                       description=str(raw.get("description", "")))


def _parse_param(path: Path, key: str, spec: Any) -> Param:
    where = f"{path}: space.{key}"
    if not isinstance(spec, dict):
        raise SearchSpaceError(f"{where}: expected a mapping with a 'type'")
    bad = sorted(set(spec) - PARAM_KEYS)
    if bad:
        raise SearchSpaceError(f"{where}: unknown field {bad[0]!r}; allowed: {', '.join(sorted(PARAM_KEYS))}")
    t = spec.get("type")
    if t not in TYPES:
        raise SearchSpaceError(f"{where}: type {t!r} is not one of {', '.join(TYPES)}")
    when = {}
    for k, v in (spec.get("when") or {}).items():
        when[k] = list(v) if isinstance(v, list) else [v]
    p = Param(key=key, type=t, when=when, log=bool(spec.get("log", False)), step=spec.get("step"))
    if t == "choice":
        vals = spec.get("values")
        if not isinstance(vals, list) or not vals:
            raise SearchSpaceError(f"{where}: a choice needs a non-empty 'values' list")
        p.values = vals
    else:
        if "low" not in spec or "high" not in spec:
            raise SearchSpaceError(f"{where}: a {t} range needs 'low' and 'high'")
        try:
            p.low, p.high = float(spec["low"]), float(spec["high"])
        except (TypeError, ValueError):
            raise SearchSpaceError(f"{where}: low/high must be numbers") from None
        if not p.low < p.high:
            raise SearchSpaceError(f"{where}: impossible range: low={p.low:g} must be < high={p.high:g}")
        if (t == "loguniform" or p.log) and p.low <= 0:
            raise SearchSpaceError(f"{where}: a log range needs low > 0 (got {p.low:g})")
        if t == "int" and (p.low != int(p.low) or p.high != int(p.high)):
            raise SearchSpaceError(f"{where}: int range bounds must be integers")
    return p


def _check_params(path: Path, params: list[Param], fixed: dict[str, Any],
                  schema: ConfigSchema) -> None:
    base = schema.defaults()
    seen: list[str] = []
    for p in params:
        probe = copy.deepcopy(base)
        try:
            set_path(probe, p.key, None)
        except ConfigError:
            raise SearchSpaceError(f"{path}: space.{p.key}: not a config key (e.g. train.lr, "
                                   "student.hidden_size, augment.p_mask)") from None
        for k in p.when:
            if k not in seen:
                raise SearchSpaceError(f"{path}: space.{p.key}: 'when' names {k!r}, which must be "
                                       "a parameter listed before it")
        for v in p.candidates():
            try:
                schema.build(fixed, {p.key: v})
            except ConfigError as e:
                raise SearchSpaceError(f"{path}: space.{p.key}: value {v!r} is invalid: {e}") from None
        seen.append(p.key)
    # joint bounds that single values cannot show
    hi = {p.key: (max(p.candidates()) if p.type != "choice" or all(
        isinstance(v, (int, float)) for v in p.values) else None) for p in params}
    pm = hi.get("augment.p_mask", _get(fixed, "augment.p_mask", 0.1))
    pp = hi.get("augment.p_pos", _get(fixed, "augment.p_pos", 0.1))
    if pm is not None and pp is not None and pm + pp > 1.0 + 1e-12:
        raise SearchSpaceError(f"{path}: space allows augment.p_mask + augment.p_pos = "
                               f"{pm + pp:g} > 1; lower their upper bounds")


def _get(d: dict, dotted: str, default: Any) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def sampled_values(space: SearchSpace, sample: dict[str, Any]) -> dict[str, Any]:
    """Tune's sample as config values by dotted key (list and dict choices, sampled by index,
    restored)."""
    vals = {k.rstrip("#"): v for k, v in sample.items()}
    keyed = {}
    for p in space.params:
        if p.key + "#" in sample:
            keyed[p.key] = p.values[sample[p.key + "#"]]
        elif p.key in vals:
            keyed[p.key] = vals[p.key]
    return keyed


def apply_sample(space: SearchSpace, sample: dict[str, Any],
                 overrides: dict[str, Any] | None = None, *, schema: ConfigSchema) -> Any:
    """A trial's config from scratch: preset config + search + overrides + sampled values (a
    running search derives it from its own config instead: ``orchestrator.config.trial_config``)."""
    return schema.build(space.config | {"search": space.search},
                        {**(overrides or {}), **sampled_values(space, sample)})
