"""Model organisms: catalogued small AD models and hand-built references.

    import ad.zoo
    ad.zoo.list()                                   # the catalogue (records)
    m = ad.zoo.load("bandit5", d_model=8, num_layers=1, num_heads=2, mlp_dim=0)
    m = ad.zoo.load("bandit5-greedy")               # a hand-built reference
    print(ad.zoo.card("bandit5", d_model=8, num_layers=1, num_heads=2, mlp_dim=0))

``load`` returns an ``ad.checkpoints.LoadedModel`` (config, params, env), read by the
project's checked loader (sealed directory; weights' shapes checked against the stored
config, which is authoritative: context and positions cannot be inferred from weights).
Its arguments are checked against the catalogue: a value no entry has, or a choice that
leaves several entries, is an error listing the valid values. ``seed=None`` gives the
entry's default seed, the best of five on *validation* tasks (bandits: a third key
stream, neither the training nor the held-out one; Dark Room: the training goals;
``ad/zoo/build.py``). ``step=None``
gives the final checkpoint, which ships in the package (``ad/zoo/weights/``, package data:
offline); other steps (0 and the powers of two) are rebuilt by
``python -m ad.zoo.build`` and loaded only if their hash equals the committed manifest's.

Families: ``bandit2`` / ``bandit5`` (Bernoulli bandits, 100 pulls, distilled from UCB1),
``darkroom`` and ``darkroom-rmax`` (9x9 Dark Room, distilled from PPO and from R-max) and
the hand-built ``bandit{2,5}-{greedy,bonus}`` (``ad/zoo/handbuilt.py``). Write-ups and
catalogue figures: ``docs/zoo/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from ad.checkpoints import LoadedModel, load_model

WEIGHTS = Path(__file__).parent / "weights"
ARCH_FIELDS = ("d_model", "num_layers", "num_heads", "mlp_dim")
_builtin_list = list


class Entry(NamedTuple):
    """One catalogued configuration (all its seeds)."""

    name: str  # "<family>/<arch>", e.g. "bandit5/d8-L1-H2-M0"
    family: str
    d_model: int
    num_layers: int
    num_heads: int
    mlp_dim: int  # 0: attention-only
    num_params: int
    seeds: tuple  # the seeds that ship
    best_seed: int  # the default: best validation score
    steps: tuple  # checkpoint steps (the last ships; the others rebuild)
    metric: str  # "regret" (bandits: pseudo-regret over 100 pulls, lower is better) or
    #   "return" (Dark Room: return by episode 50, higher is better)
    heldout: float  # the default seed's held-out score in that metric
    handbuilt: bool = False

    @property
    def path(self) -> Path:
        return WEIGHTS / self.name


def _catalogues() -> dict:
    entries = {}
    for fname in ("catalogue.json", "handbuilt.json"):
        path = WEIGHTS / fname
        if path.exists():
            entries.update(json.loads(path.read_text())["entries"])
    return entries


def list(family: str | None = None) -> "list[Entry]":  # noqa: A001 (the issue's name)
    """Every catalogued entry (of ``family`` if given), small to large."""
    out = []
    for name, e in _catalogues().items():
        if family is not None and e["family"] != family:
            continue
        best = e["best_seed"]
        out.append(Entry(name, e["family"], e["d_model"], e["num_layers"], e["num_heads"],
                         e["mlp_dim"], e["num_params"], tuple(e["seeds"]), best,
                         tuple(e["steps"]), e["metric"], e["heldout"][best]["mean"],
                         e.get("handbuilt", False)))
    if family is not None and not out:
        raise ValueError(f"ad.zoo: no family {family!r}; families: {families()}")
    return sorted(out, key=lambda e: (e.family, e.num_params, e.name))


def families() -> "list[str]":
    return sorted({e["family"] for e in _catalogues().values()})


def find(family: str, **arch) -> Entry:
    """The one entry of ``family`` matching the given architecture fields (None: any)."""
    unknown = set(arch) - set(ARCH_FIELDS)
    if unknown:
        raise TypeError(f"ad.zoo: unknown argument(s) {sorted(unknown)}; architecture "
                        f"fields: {ARCH_FIELDS}")
    entries = list(family)
    chosen = {k: v for k, v in arch.items() if v is not None}
    match = [e for e in entries if all(getattr(e, k) == v for k, v in chosen.items())]
    if len(match) == 1:
        return match[0]
    valid = {k: sorted({getattr(e, k) for e in entries}) for k in ARCH_FIELDS}
    names = [e.name.split("/", 1)[1] for e in entries]
    if not match:
        raise ValueError(f"ad.zoo: no {family} entry with {chosen}; valid values: {valid}; "
                         f"catalogued: {names}")
    raise ValueError(f"ad.zoo: {len(match)} {family} entries match {chosen} "
                     f"({[e.name for e in match]}); give more of {ARCH_FIELDS}")


def load(family: str, *, d_model: int | None = None, num_layers: int | None = None,
         num_heads: int | None = None, mlp_dim: int | None = None, seed: int | None = None,
         step: int | None = None, build_dir: str | Path | None = None) -> LoadedModel:
    """A catalogued model (module docstring). ``build_dir``: where ``ad.zoo.build`` wrote
    the rebuilt checkpoints (its ``--out``; default its default) for ``step`` other than
    the final one."""
    entry = find(family, d_model=d_model, num_layers=num_layers, num_heads=num_heads,
                 mlp_dim=mlp_dim)
    if seed is None:
        seed = entry.best_seed
    if seed not in entry.seeds:
        raise ValueError(f"ad.zoo: {entry.name} has seeds {_builtin_list(entry.seeds)}, "
                         f"not {seed!r}")
    final = entry.steps[-1]
    if step is None or step == final:
        return load_model(entry.path / f"seed{seed}")
    if step not in entry.steps:
        raise ValueError(f"ad.zoo: {entry.name} has checkpoints at steps "
                         f"{_builtin_list(entry.steps)}, not {step!r}")
    return _load_rebuilt(entry, seed, step, build_dir)


def _load_rebuilt(entry: Entry, seed: int, step: int, build_dir) -> LoadedModel:
    from ad.integrity import IntegrityError, file_digest
    from ad.zoo.build import DEFAULT_OUT

    arch = entry.name.split("/", 1)[1]
    run = Path(build_dir or DEFAULT_OUT) / "runs" / entry.family / arch / f"seed{seed}" / \
        f"step_{step:05d}"
    if not (run / "model" / "config.json").exists():
        raise FileNotFoundError(
            f"{run}: checkpoint not built; only final checkpoints ship. Rebuild with "
            f"`python -m ad.zoo.build --family {entry.family} --only {arch}` "
            f"(--out {Path(build_dir or DEFAULT_OUT)})")
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    want = manifest["checkpoints"][entry.name][str(seed)][run.name]
    got = _builtin_list(file_digest(run / "model" / "params.msgpack"))
    if got != want:
        raise IntegrityError(f"{run}: params hash {got[1][:16]}… differs from the manifest's "
                             f"{want[1][:16]}… (another build: package versions or CPU kind)")
    return load_model(run)


def card(family: str, **arch) -> str:
    """The model card (markdown) of an entry: source, data, training, held-out figures."""
    return (find(family, **arch).path / "card.md").read_text()
