"""Model organisms: catalogued small AD models and hand-built references.

Trained checkpoints that ship with the package live in ``ad/zoo/weights/`` (declared as
package data in ``pyproject.toml``, so an installed package carries them and loaders work
offline); larger artefacts are rebuilt by a documented command and checked against a
manifest of hashes. Write-ups and catalogue figures live in ``docs/zoo/``.
"""
