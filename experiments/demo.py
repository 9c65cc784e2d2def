"""The README's main job: Algorithm Distillation on 5-armed Bernoulli bandits, end to end.

Collects 20,000 UCB1 learning histories (100 pulls each) on training tasks, distills one
AD transformer on them, and evaluates it in context for 100 pulls on 1,000 held-out tasks
(and 1,000 training tasks) against UCB1 itself, a random policy and the optimum.
Leaves ``results/bandit/{eval.json,curves.png,regret.png}`` and prints a summary.
About 5-10 minutes on 2 CPU cores; rerunning reuses the finished dataset and model.
"""

import sys

from experiments.run import main

if __name__ == "__main__":
    sys.exit(main(["bandit", *sys.argv[1:]]))
