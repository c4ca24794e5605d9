"""The config kit every package's settings are written with, below all of them.

``tasks/config.py`` (``data.*``), ``students/config.py`` (``student.*``) and
``orchestrator/config.py`` (the other sections, composed into ``ExperimentConfig``) declare their
fields with :func:`knob`, so each key carries its help text (``scripts/gen_config_docs.py`` turns
it into docs/configuration.md); ``search_spaces/loader.py`` checks preset keys with
:func:`set_path`. Every bad key or value is a :class:`ConfigError` that names the key.

The sections are frozen dataclasses: a built config never changes. A config that differs in a
few values is a new one, made with :func:`with_values`. Their lists and dicts are read-only too
(derived configs share them).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def knob(default: Any, help: str) -> Any:
    """A config field with its help text (``field.metadata["help"]``), which
    ``scripts/gen_config_docs.py`` turns into docs/configuration.md. Lists and dicts get a
    ``default_factory``, so no two configs share one."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(cls: type, help: str) -> Any:
    """A nested config section (a dataclass), built fresh for each config."""
    return field(default_factory=cls, metadata={"help": help})


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


def with_values(cfg: Any, values: dict[str, Any], where: str = "") -> Any:
    """A copy of the config dataclass ``cfg`` with the dotted keys of ``values`` set, e.g.
    ``{"tasks": ["sst2"], "train.lr": 1e-3}``; ``cfg`` itself is left as it is. Values are taken
    as given: no coercion, no validation (``orchestrator.config.with_overrides`` does both)."""
    names = {f.name for f in dataclasses.fields(cfg)}
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in values.items():
        head, _, rest = dotted.partition(".")
        key = f"{where}.{head}" if where else head
        if head not in names:
            raise ConfigError(f"unknown key {where + '.' if where else ''}{dotted}; known keys "
                              f"here: {', '.join(sorted(names))}")
        if rest:
            if not dataclasses.is_dataclass(getattr(cfg, head)):
                raise ConfigError(f"unknown key {key}.{rest}: {key} is not a section")
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        direct[head] = with_values(direct.get(head, getattr(cfg, head)), sub,
                                   f"{where}.{head}" if where else head)
    return dataclasses.replace(cfg, **direct)
