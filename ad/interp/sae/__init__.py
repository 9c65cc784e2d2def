"""Sparse autoencoders on AD activations (issue 22; write-up: docs/sae.md).

* ``store`` — activation stores: closed-loop in-context rollouts on train / held-out tasks,
  any per-position hook, with per-position ground truth, in the ``ad.dataset`` format.
* ``models`` — four SAE families behind one interface (ReLU+L1 April update, TopK with the
  auxiliary dead-latent loss, BatchTopK, JumpReLU), and ``Splice``: a trained SAE as an
  edit for ``ad.hooks.run_with_hooks`` / ``ad.evaluate.ad_rollout(hooks=)``.
* ``train`` — jitted ``lax.scan`` training, ``vmap``-ed over sparsity settings.
* ``metrics`` — L0, FVU, MSE, cosine, shrinkage, dead / dense fractions.
* ``downstream`` — return / regret and action-KL recovered when the SAE is spliced in.
* ``sweep`` — a grid of SAEs per hook, saved row by row (resumable).
* ``labels`` — features against ground-truth variables (AUROC, correlation, shuffled and
  untrained controls), logit effects, causal zeroing.
* ``browser`` — the static HTML feature browser.

The command that chains them: ``python -m experiments.sae`` (``--help``).
"""
