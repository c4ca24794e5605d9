"""Content keys and atomic writes: the two rules every cached artifact follows.

A write that runs out of disk (``ENOSPC``, ``EDQUOT``) inside :func:`atomic_file`,
:func:`atomic_dir` or :func:`write_bytes_atomic` (local or fsspec) removes its temporary and
raises :class:`DiskFullError`, which names the work root and the space left: every stage writes
through these helpers, so finished work stays and a re-run of the same command resumes once
space is freed."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

# the work root's top folders (docs/architecture.md): a path below one of them names its root
WORK_ROOT_DIRS = ("teachers", "transfer", "soft_labels", "bundles", "tune")
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write ran out of disk space or quota. ``errno`` is that of the cause; ``path`` is what
    was being written, ``root`` the work root (or the folder written to), ``free`` the bytes
    left there when it failed (None when unknown)."""

    def __init__(self, err: int, message: str, path: str = "", root: str = "",
                 free: int | None = None):
        super().__init__(err, message)
        self.path, self.root, self.free = path, root, free

    def __reduce__(self):  # keeps path, root and free across processes (Ray, multiprocessing)
        return type(self), (self.errno, self.strerror, self.path, self.root, self.free)


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a full disk or quota: an
    ``OSError`` with ``ENOSPC``/``EDQUOT``, or an error of a library (pyarrow, torch) that only
    kept the system's message."""
    if not isinstance(exc, Exception):  # an interrupt is never a full disk
        return False
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            return True
        if any(os.strerror(n) in str(e) for n in _DISK_FULL_ERRNOS):
            return True
        e = e.__cause__ or e.__context__
    return False


def work_root_of(path: str | os.PathLike) -> Path:
    """The work root a path lies under: the parent of its last folder named like one of the
    work root's top folders (``<root>/transfer/<key>/...`` -> ``<root>``); else its folder."""
    p = Path(path)
    parts = p.parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in WORK_ROOT_DIRS and i > 0:
            return Path(*parts[:i])
    return p.parent


def _free_bytes(path: Path) -> int | None:
    for d in (path, *path.parents):
        try:
            return shutil.disk_usage(d).free
        except OSError:
            continue
    return None


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    if n < 1024:
        return f"{n} bytes"
    value, unit = float(n), "bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def disk_full_error(path: str | os.PathLike, exc: BaseException,
                    root: str | os.PathLike | None = None) -> DiskFullError:
    """The :class:`DiskFullError` for a write of ``path`` that failed with ``exc``."""
    root_p = Path(root) if root is not None else work_root_of(path)
    free = _free_bytes(root_p)
    err = next((e.errno for e in (exc, exc.__cause__, exc.__context__)
                if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS), errno.ENOSPC)
    return DiskFullError(
        err, f"disk full (or quota exceeded) while writing {path}: {_size(free)} free under the "
             f"work root {root_p}. Free space there and re-run the same command: finished work "
             "is kept and the run resumes where it stopped; nothing half-written is taken as "
             f"complete ({type(exc).__name__}: {exc})", str(path), str(root_p), free)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(obj: Any, length: int = 16) -> str:
    """Short stable hash of a JSON-able object (dict key order does not matter)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


@contextlib.contextmanager
def _disk_full_named(final: str | os.PathLike, root: str | os.PathLike | None,
                     remove_temporary: Callable[[], None]) -> Iterator[None]:
    """The failure path every atomic write shares: on any error in the block, remove the
    temporary, then raise a full disk as :class:`DiskFullError` naming the work root (``root``;
    by default :func:`work_root_of` ``final``) and the space left there; other errors pass."""
    try:
        yield
    except BaseException as e:
        remove_temporary()
        if not isinstance(e, DiskFullError) and is_disk_full(e):
            raise disk_full_error(final, e, root) from e
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, *, root: str | os.PathLike | None = None
               ) -> Iterator[Path]:
    """Yield a temp dir beside ``final``; on success rename it into place, on error remove it.

    A crash mid-write never leaves ``final`` looking complete. If another process finished the
    same content first, its copy is kept (content-addressed: both are equal). A full disk, in
    the block or here, raises :class:`DiskFullError` (``root``: the work root it names; by
    default :func:`work_root_of` ``final``).
    """
    final = Path(final)
    made: list[Path] = []  # the temporary, once made

    def remove() -> None:
        for t in made:
            shutil.rmtree(t, ignore_errors=True)

    with _disk_full_named(final, root, remove):
        final.parent.mkdir(parents=True, exist_ok=True)
        # os.mkdir, not tempfile.mkdtemp: the folder gets the umask's mode (mkdtemp's 0700
        # would lock every other user of a shared work root out of the result)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
        os.mkdir(tmp)
        made.append(tmp)
        yield made[0]
        try:
            os.rename(made[0], final)
        except OSError:
            if final.exists():  # lost a race to an identical result
                shutil.rmtree(made[0], ignore_errors=True)
            else:
                raise


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "wb", *,
                root: str | os.PathLike | None = None) -> Iterator[Any]:
    """Open a temp file beside ``final``; rename into place only when the block succeeds (after
    an fsync). A full disk raises :class:`DiskFullError` and leaves neither the temp file nor
    anything under ``final``'s name (``root`` as in :func:`atomic_dir`)."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")

    def remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

    with _disk_full_named(final, root, remove):
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)


def is_local_fs(fs) -> bool:
    """Whether an fsspec filesystem is the local one."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def write_bytes_atomic(fs, path: str, data: bytes, root: str | None = None) -> None:
    """Write ``data`` to ``path`` on the fsspec filesystem ``fs`` so that no reader sees a
    partial file under that name.

    Local: :func:`atomic_file`. Remote: write a temp object, then move it (object stores publish
    an object only once it is complete). A full disk raises :class:`DiskFullError` naming
    ``root`` (default: the work root ``path`` lies under) and leaves no temporary behind."""
    if is_local_fs(fs):
        with atomic_file(path, root=root) as f:
            f.write(data)
        return
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = f"{parent + '/' if parent else ''}.{name}.tmp-{uuid.uuid4().hex[:8]}"

    def remove() -> None:
        with contextlib.suppress(Exception):
            fs.rm(tmp)

    with _disk_full_named(path, root, remove):
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
