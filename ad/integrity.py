"""Integrity of artefacts on disk: checksums written with every file a result depends on,
and checked on the path that reads it.

One mechanism for every artefact kind:

- a **sealed directory** (``write_sealed`` / ``verify_sealed``): ``checksums.json`` holds
  the size and blake2b of each named file. It is written *first*, then the files (each
  atomically), so a directory whose last file exists always has its checksums; a
  directory without ``checksums.json`` predates checksums (legacy) and loads with a
  one-line warning. Trained models (``ad.checkpoints``) use it; activation stores, SAEs
  and zoo checkpoints should too.
- a **single file with a sidecar** (``write_with_sidecar`` / ``verify_sidecar``):
  ``<file>.blake2b`` is written first, then the file. Training checkpoints use it.
- datasets (``ad.dataset``) keep their per-file blake2b in the shard manifests and
  ``meta.json``, and ``meta.json`` carries ``content_blake2b`` over its own content
  (spec, layout, shard table), computed with ``json_digest``.

Hashing costs one read of the file (blake2b runs at ~0.5-1 GB/s on one core);
``file_digest`` caches each verdict per process, keyed on the file's inode, size and
modification time, so a pipeline that opens the same artefact several times hashes it
once.

Fault points (``ad.utils.fault_point``, re-exported here): ``ICRL_FAULTS=name:n`` kills
the process at the n-th time it reaches ``name`` (the tests in tests/integrity use
``checkpoint_write``, ``shard_write`` and ``model_write``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from ad.utils import atomic_write_bytes, atomic_write_text, fault_point

CHECKSUMS_FILE = "checksums.json"
SIDECAR_SUFFIX = ".blake2b"
FORMAT = "icrl-ad-checksums"
_CHUNK = 1 << 20


class IntegrityError(ValueError):
    """An artefact on disk is corrupt, truncated, edited or does not match its checksum."""


class LegacyArtefactWarning(UserWarning):
    """An artefact written before checksums existed: loaded, but not verifiable."""


_warned: set[str] = set()


def warn_legacy(path: str | os.PathLike, what: str) -> None:
    """One line per artefact and process: it has no checksum, so it cannot be verified."""
    key = f"{os.path.realpath(path)}|{what}"
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(f"{path}: {what} has no recorded checksum (written before checksums "
                  f"existed); used without verification", LegacyArtefactWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------
# Digests
# ----------------------------------------------------------------------------------------
def bytes_digest(data: bytes) -> str:
    return hashlib.blake2b(data).hexdigest()


def json_digest(obj: Any) -> str:
    """blake2b of ``obj`` as canonical JSON (sorted keys, no spaces): edits of any value
    change it, re-serialisation with another indent does not."""
    return bytes_digest(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


_digest_cache: dict[tuple, tuple[int, str]] = {}


def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    """``(size, blake2b hex)`` of a file, cached per process while the file is unchanged."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _digest_cache:
        h, size = hashlib.blake2b(), 0
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
                size += len(block)
        _digest_cache[key] = (size, h.hexdigest())
    return _digest_cache[key]


def check_file(path: Path, size: int, digest: str, what: str = "") -> None:
    """Raise ``IntegrityError`` naming ``path`` unless it has ``size`` bytes and ``digest``."""
    if not path.exists():
        raise IntegrityError(f"{path}: file is missing{f' ({what})' if what else ''}")
    got_size, got = file_digest(path)
    if got_size != size:
        raise IntegrityError(f"{path}: {got_size} bytes on disk, the checksum record says "
                             f"{size}: truncated, extended or edited")
    if got != digest:
        raise IntegrityError(f"{path}: checksum mismatch (blake2b {got[:16]}…, recorded "
                             f"{digest[:16]}…): the file is corrupt or was edited")


# ----------------------------------------------------------------------------------------
# Sealed directories
# ----------------------------------------------------------------------------------------
def write_sealed(directory: str | os.PathLike, files: Mapping[str, bytes],
                 fault: str | None = None) -> None:
    """Write ``checksums.json`` and then each file (atomically, in the given order, so the
    last one marks the directory complete); ``fault`` names a fault point per file."""
    directory = Path(directory)
    record = {"format": FORMAT, "files": {name: {"bytes": len(data), "blake2b": bytes_digest(data)}
                                          for name, data in files.items()}}
    atomic_write_text(directory / CHECKSUMS_FILE, json.dumps(record, indent=1) + "\n")
    for name, data in files.items():
        atomic_write_bytes(directory / name, data, fault=fault)


def verify_sealed(directory: str | os.PathLike, names: Iterable[str], what: str) -> bool:
    """Check each named file against ``checksums.json``; True if verified, False (and a
    one-line warning) for a legacy directory without checksums. Raises
    ``IntegrityError`` naming the file on any mismatch."""
    directory = Path(directory)
    path = directory / CHECKSUMS_FILE
    if not path.exists():
        warn_legacy(directory, what)
        return False
    try:
        record = json.loads(path.read_text())
        entries = record["files"]
        if record.get("format") != FORMAT:
            raise KeyError("format")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise IntegrityError(f"{path}: not a valid checksum record ({type(e).__name__}: {e})") from None
    for name in names:
        if name not in entries:
            raise IntegrityError(f"{path}: no checksum recorded for {name}")
        entry = entries[name]
        check_file(directory / name, int(entry["bytes"]), str(entry["blake2b"]), what)
    return True


# ----------------------------------------------------------------------------------------
# Single files with a sidecar
# ----------------------------------------------------------------------------------------
def sidecar(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_with_sidecar(path: str | os.PathLike, data: bytes, fault: str | None = None) -> None:
    """The sidecar first, then the file: a file written by this function always has one."""
    atomic_write_text(sidecar(path), f"{bytes_digest(data)} {len(data)}\n")
    atomic_write_bytes(path, data, fault=fault)


def verify_sidecar(path: str | os.PathLike, what: str) -> bool:
    """True if ``path`` matches its sidecar, False (one-line warning) without one;
    ``IntegrityError`` naming the file on a mismatch."""
    path = Path(path)
    side = sidecar(path)
    if not side.exists():
        warn_legacy(path, what)
        return False
    try:
        digest, size = side.read_text().split()
        size = int(size)
    except ValueError:
        raise IntegrityError(f"{side}: not a checksum sidecar ('<blake2b> <bytes>')") from None
    check_file(path, size, digest, what)
    return True


# ----------------------------------------------------------------------------------------
# Temp files left by killed writers
# ----------------------------------------------------------------------------------------
def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove ``.tmp-*`` files left in ``directory`` by a killed writer whose process is
    gone (``ad.utils.atomic_write_bytes`` names them ``.tmp-<name>-<pid>``); a live
    process's temp file is kept. Returns what was removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for tmp in directory.glob(".tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["CHECKSUMS_FILE", "IntegrityError", "LegacyArtefactWarning", "bytes_digest",
           "check_file", "fault_point", "file_digest", "json_digest",
           "remove_stale_temp_files", "verify_sealed", "verify_sidecar", "warn_legacy",
           "write_sealed", "write_with_sidecar"]
