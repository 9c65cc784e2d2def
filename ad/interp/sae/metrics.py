"""How good is an SAE: reconstruction statistics, and what splicing it costs the agent.

Reconstruction (``reconstruction``, on held-out positions, a grid of SAEs at once):

* **L0** — mean active latents per position;
* **FVU** — fraction of variance unexplained, Σ‖x − x̂‖² / Σ‖x − x̄‖² (x̄: the mean over
  the evaluated positions);
* **MSE** — mean over positions of Σ_d (x − x̂)² in the activation's own units;
* **cosine** — mean cos(x, x̂);
* **shrinkage** — mean x̂·x / ‖x‖² (1: no shrinkage; < 1: the reconstruction is too short);
* **dead / dense** — fractions of latents that never fire on these positions / fire on
  more than 10% of them; ``frequency`` (width,) the firing rate of each latent.

RL-native (``ad.interp.sae.downstream``): the reconstruction spliced into closed-loop
rollouts (return / regret recovered) and into teacher-forced replays (action-KL
recovered), relative to zero- and mean-ablating the activation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ad.interp.sae.models import Splice

DENSE = 0.1  # a latent firing on more than this fraction of positions is "dense"


class Reconstruction(NamedTuple):
    """Per-SAE reconstruction statistics (leading grid axis when computed for a grid)."""

    l0: np.ndarray
    fvu: np.ndarray
    mse: np.ndarray
    cosine: np.ndarray
    shrinkage: np.ndarray
    dead: np.ndarray  # fraction of latents never active
    dense: np.ndarray  # fraction of latents active on > DENSE of positions
    frequency: np.ndarray  # (..., width) firing rate of each latent


def fvu(x, x_hat) -> float:
    """Fraction of variance unexplained of reconstructions ``x_hat`` of ``x`` (n, d)."""
    x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
    return float(np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(0)) ** 2))


def l0(z) -> float:
    """Mean number of nonzero latents per row of ``z`` (n, width)."""
    return float(np.mean(np.sum(np.asarray(z) != 0, -1)))


@jax.jit
def _chunk_sums(splice: Splice, x):
    z = splice.encode(x)
    x_hat = splice.reconstruct(x)
    err = jnp.sum((x - x_hat) ** 2, -1)
    nx = jnp.linalg.norm(x, axis=-1)
    nh = jnp.linalg.norm(x_hat, axis=-1)
    cos = jnp.sum(x * x_hat, -1) / jnp.maximum(nx * nh, 1e-12)
    shrink = jnp.sum(x * x_hat, -1) / jnp.maximum(nx ** 2, 1e-12)
    return (jnp.sum(err), jnp.sum(jnp.sum(z > 0, -1)), jnp.sum(cos), jnp.sum(shrink),
            jnp.sum(z > 0, 0))


def reconstruction(splices: Splice, x: np.ndarray, chunk: int = 8192) -> Reconstruction:
    """Statistics of a grid of SAEs (``splices`` with a leading grid axis) on ``x`` (n, d),
    in chunks (one vmapped jitted call per chunk)."""
    x = np.asarray(x, np.float32)
    n = x.shape[0]
    total = None
    f = jax.vmap(_chunk_sums, in_axes=(0, None))
    for lo in range(0, n, chunk):
        part = jax.device_get(f(splices, jnp.asarray(x[lo:lo + chunk])))
        total = part if total is None else jax.tree.map(np.add, total, part)
    err, active, cos, shrink, fired = (np.asarray(t, np.float64) for t in total)
    var = np.sum((x.astype(np.float64) - x.mean(0, dtype=np.float64)) ** 2)
    freq = fired / n
    return Reconstruction(l0=active / n, fvu=err / var, mse=err / n, cosine=cos / n,
                          shrinkage=shrink / n, dead=np.mean(freq == 0, -1),
                          dense=np.mean(freq > DENSE, -1), frequency=freq)
