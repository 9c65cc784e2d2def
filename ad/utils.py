"""Small shared helpers: atomic file writes and the provenance every result records."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path

PACKAGES = ("numpy", "jax", "jaxlib", "flax", "optax", "gymnasium", "minigrid")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    Writes a temp file in the same directory, fsyncs it, then ``os.replace``s it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
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
