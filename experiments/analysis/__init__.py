"""Analysis commands on trained models and collected data, apart from the pipeline
(``experiments.collect``, ``experiments.run``, ``experiments.demo``). Each is
``python -m experiments.analysis.<name> --help``:

- ``prompting``: the paper's prompting check (feed a half-trained source's episodes,
  does the model keep improving?).
- ``imitation``: teacher-forced imitation of the source along its histories.
- ``retention``: closed-loop P(success | k successes before), model vs data vs source.
- ``exploration``: how often random or persistent-walk exploration finds a hidden goal.
- ``navigation``: policy mass towards the pursued cell, teacher-forced vs closed loop.
- ``plot_sources``: the sources' own learning curves from their datasets.
"""
