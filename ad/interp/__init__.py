"""Analysis built on the AD model: activation caches, logit attribution, patching sweeps,
probes, reference agents, sparse autoencoders and the explorer.

It stands on ``ad.hooks`` (hook points and interventions, which the model and the
rollouts call) and on the rest of ``ad``; nothing else in ``ad`` imports ``ad.interp``
(``tests/ad/test_layout.py`` checks it), so analysis code can grow without touching
training or evaluation. Analysis commands live in ``experiments/analysis/``, their
write-ups in ``docs/interp/``, ``docs/study/`` and ``docs/sae/``.
"""
