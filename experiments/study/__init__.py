"""Issue 21's study: does an AD model do RL in context, or imitate its source's slow learning?

One module per experiment (``python -m experiments.study.<name> --help``): ``rewards``
(1: rewards or schedule), ``position`` (3: position or content), ``information``
(2: information or competence), ``exploration`` (8: exploration before the first
reward), ``goal_switch`` (6, Dark Room: the goal moved, memorisation),
``fingerprint`` (4: which reference agent it acts like), ``reward_path`` (7, closed-loop
half: heads ablated); ``common`` holds what they
share; ``python -m experiments.study`` runs them all, resumably. The write-up is docs/findings.md.
"""
