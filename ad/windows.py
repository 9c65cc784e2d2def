"""Training windows: deterministic batches of across-episode windows of learning histories.

A window is ``T`` consecutive steps of one history (never crossing two). Batch ``s`` is
drawn by ``numpy.random.default_rng([seed, s])`` alone, so batches are a pure function of
the step: resuming at step ``s`` replays exactly the batches an uninterrupted run would
see (the sampler's whole state is the step number, which the checkpoint holds). Windows
are read from the memory-mapped dataset (never loaded whole) and turned into model
inputs by the one input builder (``ad.inputs``); a ``Prefetcher`` assembles the next
batches in a thread and puts them on the devices while the current step runs.
"""

from __future__ import annotations

import queue
import threading

import jax
import numpy as np

from ad.config import ModelConfig
from ad.dataset import Dataset
from ad.inputs import Previous, stream_inputs
from ad.train_step import Batch

# step fields a run can learn to predict (DistillConfig.targets)
TARGETS = ("action", "intended_action")


class WindowSampler:
    """Deterministic batches of training windows: batch ``s`` depends only on (seed, s).

    The first step of a window reads the step before it (``prev_action``, ...); a window
    that starts at step 0 starts its stream and gets the stream-start record (DESIGN.md).
    ``last_steps`` > 0 (Expert Distillation) draws windows only from each history's last
    ``max(last_steps, T)`` steps. ``targets`` names the step field the model learns to
    predict: ``action``, or ``intended_action`` where the source stored its choice before
    injected noise (the memory diagnostic); the inputs always hold the executed actions.
    """

    def __init__(self, dataset: Dataset, config: ModelConfig, window: int, batch_size: int,
                 seed: int, last_steps: int = 0, targets: str = "action"):
        T, n = window, dataset.num_steps
        if n < T:
            raise ValueError(f"{dataset.path}: histories have {n} steps, too short for "
                             f"windows of {T} steps")
        if targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
        if targets != "action" and targets not in dataset.optional_step_fields:
            raise ValueError(f"{dataset.path}: targets={targets!r}, but the dataset stores no "
                             f"{targets} (its source injected no noise; use targets='action')")
        self.dataset, self.config, self.T, self.B, self.seed = dataset, config, T, batch_size, seed
        self.targets = targets
        self.lo = 0 if last_steps <= 0 else max(0, n - max(last_steps, T))
        self.hi = n - T  # inclusive upper bound of a window start

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        history = rng.integers(0, self.dataset.num_histories, self.B)
        start = rng.integers(self.lo, self.hi + 1, self.B)
        return history, start

    def batch(self, step: int) -> Batch:
        history, start = self.indices(step)
        # Read the window plus the step before it (when there is one), then split the two:
        # rows[offset : offset + T] with offset 1 iff the window starts mid-stream.
        length = min(self.T + 1, self.dataset.num_steps)
        first = np.clip(start - 1, 0, self.dataset.num_steps - length)
        rows = self.dataset.read_windows(history, first, length)
        offset = (start - first)[:, None]  # 0 or 1
        idx = offset + np.arange(self.T)[None]  # (B, T)

        def take(x):
            return np.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

        done = np.logical_or(rows.terminated, rows.truncated)
        before = Previous(action=rows.action[:, 0], reward=rows.reward[:, 0], done=done[:, 0],
                          obs=jax.tree.map(lambda o: o[:, 0], rows.obs))
        obs = jax.tree.map(take, rows.obs)
        action = take(rows.action)
        inputs = stream_inputs(obs, action, take(rows.reward), take(done), self.config,
                               before=before, starts=start == 0)
        target = action if self.targets == "action" else take(getattr(rows, self.targets))
        return Batch(inputs=inputs, target_action=target.astype(np.int32),
                     mask=np.ones(action.shape, np.float32))


class Prefetcher:
    """Assemble batches ``start..stop-1`` in a thread and put them on the devices early."""

    def __init__(self, sampler: WindowSampler, start: int, stop: int, sharding, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

        def work():
            try:
                for step in range(start, stop):
                    if self._stop.is_set():
                        return
                    item = jax.device_put(sampler.batch(step), sharding)
                    while not self._stop.is_set():
                        try:
                            self._queue.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
            except BaseException as e:  # surface reader errors in the training loop
                self._queue.put(e)

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    def next(self) -> Batch:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
