"""One place that hides secrets in URIs before anything prints, logs or records them.

A tracking store such as ``postgresql://user:PASS@db/mlflow`` or ``https://user:TOKEN@host``
carries its password in the URI; MLflow params, ``search_space.yaml``, report files and console
lines are readable by everyone who can open the UI or the logs. :func:`redact` replaces the
password of every URI in a string (and secret-looking query values, e.g. ``?token=...``) with
``***``; :func:`redact_deep` does the same through dicts and lists. The real URI is only ever
handed to the clients that connect with it.
"""
from __future__ import annotations

import re
from typing import Any

MASK = "***"

# scheme://user:password@host  (the password may hold any character but '@', '/' and space;
# a user without a password, scheme://user@host, is kept)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):(?P<secret>[^\s@/]*)@")
# ?password=...&token=...: query values whose name says they are secret
_QUERY = re.compile(r"(?P<head>[?&;](?:[A-Za-z0-9.-]*[_.-])?(?:password|passwd|pwd|secret|token|"
                    r"signature|sig|credential|credentials|key)(?:[_.-][A-Za-z0-9_.-]*)?=)"
                    r"(?P<secret>[^&;\s#]+)", re.IGNORECASE)


def redact(text: Any) -> Any:
    """``text`` with the secret of every URI in it replaced by ``***`` (non-strings as given):
    ``postgresql://u:PASS@db/mlflow`` -> ``postgresql://u:***@db/mlflow``."""
    if not isinstance(text, str) or "://" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m.group('head')}{MASK}", text)


def redact_deep(obj: Any) -> Any:
    """:func:`redact` applied to every string in nested dicts, lists and tuples (a copy)."""
    if isinstance(obj, dict):
        return {k: redact_deep(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_deep(v) for v in obj)
    return redact(obj)


def has_secret(uri: str | None) -> bool:
    """Whether ``uri`` holds something :func:`redact` hides (then print no command with it)."""
    return bool(uri) and redact(uri) != uri
