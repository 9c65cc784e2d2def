"""What an AD transformer is: its architecture (``ArchConfig``) and, with the env's
observation and action spaces filled in, the full static model description (``ModelConfig``).

``ArchConfig`` holds every hyper-parameter a user chooses, with the one set of defaults
the project uses (the README's Dark Room model); ``DistillConfig.model`` is an
``ArchConfig``. ``ModelConfig`` is an ``ArchConfig`` plus the fields the env decides
(``num_actions``, ``obs_shape``, ``obs_num_values``); ``ModelConfig.for_env(env, arch)``
builds it. Both are frozen dataclasses whose ``dataclasses.asdict`` is JSON-safe.

The context rule lives here and nowhere else: every attention layer sees the last
``context`` steps (c, the current one included), so a logit depends on at most
``receptive_field = L·(c−1)+1`` steps; training windows default to ``2c`` steps
(``training_window``), longer than the band, so training sees the banded attention
that long evaluations use.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import jax.numpy as jnp
import numpy as np

OBS_ENCODERS = ("cell", "xy", "discrete", "minigrid")
TOKEN_LAYOUTS = ("step", "oar")
POSITIONS = ("rope", "alibi", "none")
DTYPES = ("float32", "bfloat16")
ACTIVATIONS = ("gelu", "relu")
ATTENTION_IMPLS = ("auto", "dense", "blocked")

# Fields that earlier versions had and that were removed as results showed they did not
# help (docs/key_to_door.md, "Knobs removed"): saved configs that hold them at these
# values load with a warning; any other value is refused (the model would differ).
REMOVED_FIELDS = {"obs_linear": False, "episode_return_token": False, "task_entries": 0}
REMOVED_AT = "2ba31a2"  # the last commit that has every removed field


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """The architecture of an AD transformer (every field a user may choose)."""

    context: int = 60  # c: the band, in steps, every attention layer sees (incl. current)
    d_model: int = 64  # residual stream width
    num_layers: int = 2  # transformer blocks
    num_heads: int = 4  # attention heads; d_model must be divisible by it
    mlp_dim: int = 256  # hidden width of each MLP; 0 = attention-only (no MLP: the
    #   block's MLP output is exactly zero and mlp_out has no bias; the model zoo's
    #   attention-only organisms, ad/zoo). Its hooks stay, 0 neurons wide
    dropout: float = 0.1  # dropout on embeddings, attention output and MLP output
    attn_dropout: float = 0.0  # dropout on attention probabilities (the paper: 0.5)
    token_mask_prob: float = 0.0  # P(replace a step's/token's input by the mask embedding)
    token_layout: str = "step"  # "step" (1 token/step) or "oar" (the paper's 3 tokens/step)
    positions: str = "rope"  # "rope" (rotary q/k) or "alibi" (linear distance biases);
    #   "none": no position signal, attention sees the band as a set. Added for the zoo's
    #   hand-built models (ad/zoo/handbuilt.py): their per-arm averages must not depend on
    #   where a pull sits in the band, which RoPE's rotation and ALiBi's bias would impose
    rope_base: float = 10000.0  # RoPE frequency base
    activation: str = "gelu"  # MLP nonlinearity: "gelu" (tanh approximation) or "relu"
    dtype: str = "float32"  # matmul compute dtype; params, softmax, logits stay float32
    obs_encoder: str = ""  # "" = the env's default (ModelConfig.for_env). "cell": one table
    #   over x + size*y (obs (2,) grid cell); "xy": separate x and y tables, summed;
    #   "discrete": one table per entry of a discrete vector observation, summed;
    #   "minigrid": obs {"image": (V, V, 3), "direction": ()} (ad.model.ObsEncoder)
    episode_start_token: bool = False  # add E_start to steps that start an episode (RL²'s
    #   done input); False keeps the paper's (o, a, r) inputs only
    prev_obs_token: bool = False  # add E'_obs(obs[t-1]) to every step token, so each token
    #   holds the whole last transition ("step" layout only; zero at stream starts)
    attention_impl: str = "auto"  # "dense": (N, N) masked scores; "blocked": query blocks of
    #   c steps attend to their own and the previous block only; "auto": blocked when the
    #   window spans >= 3 blocks. Same logits either way

    def __post_init__(self):
        for name in ("d_model", "num_layers", "num_heads", "mlp_dim", "context"):
            value = getattr(self, name)
            low = 0 if name == "mlp_dim" else 1  # mlp_dim 0: attention-only
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{type(self).__name__}.{name} must be an int >= {low}, got "
                                 f"{value!r}")
        valid_encoders = OBS_ENCODERS if type(self) is ModelConfig else ("",) + OBS_ENCODERS
        for name, valid in (("obs_encoder", valid_encoders), ("token_layout", TOKEN_LAYOUTS),
                            ("positions", POSITIONS), ("dtype", DTYPES),
                            ("activation", ACTIVATIONS), ("attention_impl", ATTENTION_IMPLS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{type(self).__name__}.{name} must be one of {valid}, got "
                                 f"{getattr(self, name)!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"{type(self).__name__}.d_model={self.d_model} is not divisible "
                             f"by num_heads={self.num_heads}")
        if self.positions == "rope" and (self.d_model // self.num_heads) % 2:
            raise ValueError(f"{type(self).__name__}: RoPE needs an even head dim, got "
                             f"{self.d_model // self.num_heads}")
        for name in ("dropout", "attn_dropout", "token_mask_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{type(self).__name__}.{name} must lie in [0, 1), got "
                                 f"{value!r}")
        if self.prev_obs_token and self.token_layout != "step":
            raise ValueError(f"{type(self).__name__}.prev_obs_token needs token_layout='step' "
                             f"(in 'oar' the previous observation is a token of its own)")

    # ---- derived: the one place for the context rule ---------------------------------
    @property
    def receptive_field(self) -> int:
        """Steps a logit can depend on, the current one included: L*(c-1) + 1."""
        return self.num_layers * (self.context - 1) + 1

    def training_window(self, window: int = 0) -> int:
        """Steps per training window: ``window`` if given, else 2c (DESIGN: 2c-4c)."""
        if window and window < self.context:
            raise ValueError(f"training window ({window}) must be >= context ({self.context}); "
                             f"longer windows (2c-4c) train the banded attention that long "
                             f"evaluations use")
        return window or 2 * self.context

    @property
    def tokens_per_step(self) -> int:
        return 3 if self.token_layout == "oar" else 1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def compute_dtype(self):
        return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "") -> "ArchConfig":
        """Build from a saved dict; removed fields at their old defaults are dropped with a
        warning, anything else unknown is an error naming the field."""
        return cls(**_known_fields(cls, d, where or cls.__name__))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(ArchConfig):
    """A full, static description of one AD transformer: ``ArchConfig`` + the env's spaces.

    Load back with ``ModelConfig.from_dict(json.loads(text))``.
    """

    num_actions: int  # size of the action space; token id num_actions is "none"
    obs_shape: tuple[int, ...] = (2,)  # shape of the observation (MiniGrid: the image's)
    obs_num_values: int = 9  # each observation entry lies in [0, obs_num_values)

    def __post_init__(self):
        object.__setattr__(self, "obs_shape", tuple(int(s) for s in self.obs_shape))
        if self.obs_encoder == "":
            object.__setattr__(self, "obs_encoder",
                               "cell" if self.obs_shape == (2,) else "discrete")
        super().__post_init__()
        for name in ("num_actions", "obs_num_values"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be an int >= 1, got {value!r}")
        if self.obs_encoder in ("cell", "xy") and self.obs_shape != (2,):
            raise ValueError(f"ModelConfig.obs_encoder={self.obs_encoder!r} needs obs_shape "
                             f"(2,), got {self.obs_shape}")
        if self.obs_encoder == "minigrid" and (len(self.obs_shape) != 3
                                               or self.obs_shape[2] != 3):
            raise ValueError(f"ModelConfig.obs_encoder='minigrid' needs obs_shape (V, V, 3) "
                             f"(the image), got {self.obs_shape}")

    @property
    def arch(self) -> ArchConfig:
        """The architecture part (what a distillation run chose)."""
        return ArchConfig(**{f.name: getattr(self, f.name)
                             for f in dataclasses.fields(ArchConfig)})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def for_env(cls, env, arch: ArchConfig | None = None, **overrides) -> "ModelConfig":
        """The model ``arch`` describes, with the env's action and observation spaces.

        A (2,) observation spec (grid cell) defaults to the "cell" encoder, any other
        discrete vector spec to "discrete", a MiniGrid spec ``{"image", "direction"}`` to
        "minigrid"; ``arch.obs_encoder`` (or ``overrides``) may choose, e.g. "xy".
        """
        kw = dataclasses.asdict(arch if arch is not None else ArchConfig())
        kw.update(overrides)
        spec = env.observation_spec()
        if isinstance(spec, dict) and set(spec) == {"image", "direction"}:
            image = spec["image"]
            env_kw = dict(obs_shape=tuple(image.shape), obs_num_values=int(image.num_values))
            kw["obs_encoder"] = kw.get("obs_encoder") or "minigrid"
        else:
            if not (hasattr(spec, "shape") and hasattr(spec, "num_values")):
                raise ValueError(f"ModelConfig.for_env: {env.name} has a structured "
                                 f"observation spec {spec!r}; no encoder for it yet")
            if spec.num_values is None:
                raise ValueError(f"ModelConfig.for_env: {env.name} observation is not discrete")
            env_kw = dict(obs_shape=tuple(spec.shape), obs_num_values=int(spec.num_values))
        return cls(num_actions=int(env.num_actions), **env_kw, **kw)


def _known_fields(cls, d: dict, where: str) -> dict:
    """``d`` restricted to ``cls``'s fields; removed fields at their defaults are dropped
    with a warning (saved runs from before the clean-up still load)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in d.items():
        if key in fields:
            out[key] = value
        elif key in REMOVED_FIELDS:
            if value != REMOVED_FIELDS[key]:
                raise ValueError(
                    f"{where}: field {key}={value!r} was removed (it did not help; see "
                    f"docs/key_to_door.md); a model that uses it loads only at commit "
                    f"{REMOVED_AT}")
            warnings.warn(f"{where}: ignoring removed field {key}={value!r} (its default)",
                          stacklevel=3)
        else:
            raise ValueError(f"{where}: unknown field {key!r}; valid fields: {sorted(fields)}")
    return out
