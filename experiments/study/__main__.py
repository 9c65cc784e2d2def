"""``python -m experiments.study``: every experiment of the study (``experiments.study.all``)."""

import sys

from experiments.study.all import main

sys.exit(main())
