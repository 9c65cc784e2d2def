"""Small shared helpers: atomic file writes, fault points and the provenance every result
records."""

from __future__ import annotations

import datetime
import os
import platform
import signal
import subprocess
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path

PACKAGES = ("numpy", "jax", "jaxlib", "flax", "optax", "gymnasium", "minigrid")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill this process (SIGKILL: no clean-up runs, as with a real kill) the n-th time
    it reaches ``name`` when the environment variable ``ICRL_FAULTS`` holds ``name:n``
    (comma-separated). The fault-injection tests (tests/integrity) stop runs this way."""
    spec = os.environ.get("ICRL_FAULTS")
    if not spec:
        return
    for item in spec.split(","):
        fault, _, nth = item.partition(":")
        if fault.strip() == name:
            _fault_counts[name] = _fault_counts.get(name, 0) + 1
            if _fault_counts[name] == int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fault: str | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    Writes a temp file ``.tmp-<name>-<pid>`` in the same directory, fsyncs it, then
    ``os.replace``s it. On an error (e.g. a full disk) the temp file is removed so it
    does not keep the disk full; one left by a kill is removed by the next run
    (``ad.integrity.remove_stale_temp_files``). ``fault`` names the fault point
    between the write and the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if fault:
            fault_point(fault)
        os.replace(tmp, path)
    except OSError as e:  # e.g. ENOSPC from write or fsync: say which file could not be written
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"{path}: could not be written ({e.strerror or e}); nothing "
                               f"was replaced") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def git_commit() -> str | None:
    """The checkout's HEAD commit (with ``+dirty`` if uncommitted changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not commit:
        return None
    return commit + ("+dirty" if dirty else "")


def provenance() -> dict:
    """When, with what package versions and at which commit a result was produced."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            pass
    try:
        import jax

        backend = jax.default_backend()
        devices = [str(d) for d in jax.devices()]
    except Exception:  # provenance must never be the reason a run fails
        backend, devices = None, []
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
        "git_commit": git_commit(),
        "backend": backend,
        "devices": devices,
    }


# glibc serves large allocations from transparent huge pages with this tunable; XLA on CPU
# allocates and frees big temporaries every step, and without it ~30% of a training step
# went to page faults (benchmarks/ad_throughput.py measures both).
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"


def reexec_with_hugepage_malloc() -> None:
    """Restart this process with the tunable set (glibc reads tunables only at start-up).

    A no-op when already set, off Linux, or with ``ICRL_NO_HUGEPAGE_MALLOC=1``.
    """
    current = os.environ.get("GLIBC_TUNABLES", "")
    if ("glibc.malloc.hugetlb" in current or platform.system() != "Linux"
            or os.environ.get("ICRL_NO_HUGEPAGE_MALLOC") == "1"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, [current, HUGEPAGE_TUNABLE])))
    # orig_argv keeps ``-m package.module``: re-running sys.argv[0] as a script would put
    # its folder, not the working directory, first on sys.path
    os.execve(sys.executable, list(sys.orig_argv), env)


# ---------------------------------------------------------------------------------------
# Typed overrides: one parser for every KEY=VALUE flag (collect's env/source overrides,
# run's distill overrides), driven by the target dataclass's field types
# ---------------------------------------------------------------------------------------
_NONE_WORDS = ("none", "null")


def _describe(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce_field(tp, value, where: str):
    """``value`` (a CLI string or a Python value) as the annotated type ``tp``.

    Handles ``int``, ``float``, ``bool``, ``str``, ``X | None`` and ``tuple[X, ...]``
    (a CLI string ``"64,64"``; ``"()"`` or ``""`` is the empty tuple). Raises
    ``ValueError`` naming ``where``, the value and the expected type.
    """
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return coerce_field(a, value, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{where}: expected {' or '.join(map(_describe, args))}, got {value!r}")
    if origin is tuple:
        item = args[0] if args else str
        if isinstance(value, str):
            text = value.strip().strip("()[]").strip()
            value = [v for v in (p.strip() for p in text.split(",")) if v] if text else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(coerce_field(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        import numpy as np

        kind = "an int" if tp is int else "a number"
        if not isinstance(value, bool):
            if isinstance(value, (int, np.integer)) or (tp is float and isinstance(value, float)):
                return tp(value)
            if isinstance(value, str):
                try:
                    return tp(value.strip())
                except ValueError:
                    pass
        raise ValueError(f"{where}: expected {kind}, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, got {value!r}")
    return value  # another type (a nested config, a mapping): its own constructor checks


def field_types(cls) -> dict:
    """``{field name: annotated type}`` of a dataclass (string annotations resolved)."""
    import dataclasses
    import typing

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name)
        if tp is None and f.default is not dataclasses.MISSING and f.default is not None:
            tp = type(f.default)
        out[f.name] = tp
    return out


def coerce_overrides(cls, overrides, what: str) -> dict:
    """Check override names against a dataclass and convert each value to its field's
    type (CLI strings are parsed; ``lr=1`` becomes ``1.0``, so the same run spelled two
    ways is the same run). Unknown names and bad values raise ``ValueError`` naming the
    field, the value and what is valid."""
    types_ = field_types(cls)
    unknown = sorted(set(overrides) - set(types_))
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; valid fields: {sorted(types_)}")
    return {k: coerce_field(types_[k], v, f"{what}.{k}") if types_[k] is not None else v
            for k, v in overrides.items()}


def check_output_path(path: str | os.PathLike, what: str) -> None:
    """Fail now, naming the flag, if ``path`` cannot become a directory we write into:
    an existing file, a file on the way, or a read-only parent."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{what} {path}: exists and is not a directory")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: cannot create it, {parent} is not writable")


def parse_override(text: str) -> tuple[str, str]:
    """``"key=value"`` -> ``(key, value)``; the value stays a string until
    ``coerce_overrides`` gives it its field's type."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"override {text!r} must look like KEY=VALUE")
    return key, raw.strip()
