"""gymnasium wrappers for the real ``minigrid`` envs, mirroring options of the JAX ports."""

from __future__ import annotations

import gymnasium

from envs.minigrid.core import hide_goal_np


class HideGoalObs(gymnasium.ObservationWrapper):
    """Render every goal cell of ``obs["image"]`` as empty floor ``(1, 0, 0)``.

    The same rule as ``minigrid-fourrooms-dark`` (``hide_goal=True`` in the port):
    dynamics and rewards are untouched, only what the agent sees changes. The
    observation space is unchanged (the image keeps its shape, dtype and bounds).
    """

    def observation(self, observation):
        return dict(observation, image=hide_goal_np(observation["image"]))
