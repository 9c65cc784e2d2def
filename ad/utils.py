"""Small shared helpers: atomic file writes and the provenance every result records."""

from __future__ import annotations

import datetime
import os
import platform
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
