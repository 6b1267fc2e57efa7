"""Experiment drivers: they simulate data, train, encode and score, using every layer below.

``benchmark``        ``cryonoo bench generalization`` (recipes × seeds, summary tables).
``ceiling``          the supervised oracle encoder: what one image carries of the labels.
``report``           :func:`evaluate_run`: one run against its simulated ground truth.
``overview``         the per-seed figure (seen/unseen latents, decoded maps).
``refinement``       amortized vs ``encode --refine`` vs the autodecoder on unseen images.
``inference_bench``  ``cryonoo bench inference``; ``encode_bench``: ``cryonoo bench encode``.
``machine``          how results name the device that measured them.

Pure metrics (FSC, per-image FSC, latent shift, label recovery, clusters, plots) stay in
:mod:`cryonoo.eval`, which imports no model or training code.
"""
