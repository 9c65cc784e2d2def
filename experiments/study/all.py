"""Every experiment of the study, in the issue's order, resumably.

    python -m experiments.study --runs /work/tut/runs            # = python -m experiments.study.all

Runs experiments 1 (rewards), 3 (position), 2 (information), 8 (exploration) on each
subject, 6 (goal_switch) on Dark Room, 4 (fingerprint), 5 (probes) and both halves of 7
(reward_path: closed loop; reward_patching: patching) on each, then 9 (over_training: one
training run's snapshots, seed 0 unless ``--seeds`` is given) on each; a finished result of
the same experiment, config and models (``<out>/<experiment>-<subject>.json`` with the same
``evaluation_key``) is reused, so an interrupted run resumes where it stopped. ``--only``
picks experiments; each one's own command (``python -m experiments.study.<name> --help``)
says what it measures.
"""

from __future__ import annotations

import argparse
import sys
import time

from experiments.study import common as C
from experiments.study import (exploration, fingerprint, goal_switch, information,
                               over_training, position, probes, reward_patching, reward_path,
                               rewards)

EXPERIMENTS = {"rewards": rewards, "position": position, "information": information,
               "exploration": exploration, "goal_switch": goal_switch,
               "fingerprint": fingerprint, "probes": probes, "reward_path": reward_path,
               "reward_patching": reward_patching, "over_training": over_training}
ONLY = {"goal_switch": ("darkroom",)}  # experiments without a bandit analogue


def main(argv=None) -> int:
    p = C.parser("python -m experiments.study", __doc__)
    p.add_argument("--only", nargs="+", choices=list(EXPERIMENTS), default=list(EXPERIMENTS),
                   help="experiments to run (default: all, in the issue's order)")
    p.set_defaults(seeds=None)  # None: each experiment's own default (SEEDS, else 0 1 2)
    args = p.parse_args(argv)
    t0 = time.time()
    done = []
    for name in args.only:
        module = EXPERIMENTS[name]
        seeds = args.seeds or list(getattr(module, "SEEDS", (0, 1, 2)))
        for config in C.configs_from(argparse.Namespace(**{**vars(args), "seeds": seeds})):
            if config.subject not in ONLY.get(name, (config.subject,)):
                continue
            record = C.run(module, config, force=args.force)
            module.print_summary(record)
            done.append((name, config.subject, record.get("wall_s", 0.0)))
    print("\n=== study: finished ===")
    for name, subject, wall in done:
        print(f"  {name:12s} {subject:9s} {wall:7.0f} s  -> "
              f"{C.output_paths(name, C.StudyConfig(subject=subject, out=args.out))[0]}")
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
