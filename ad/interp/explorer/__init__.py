"""The explorer: a local web app to watch an AD model learn in context, edit its context
and look inside it (``python -m ad.interp.explorer``; ``docs/explorer.md``).

``engine`` computes (on the toolkit: ``ad.evaluate``, ``ad.hooks``, ``ad.interp``),
``app`` serves it as a small JSON API and one static page (``static/``), ``__main__``
finds or trains a model and starts the server on 127.0.0.1.
"""
