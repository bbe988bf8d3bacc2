"""Evaluation as a product (`editloop eval`): a version of an editor, an instruction editor or a reward model
measured on a named held-out suite, stored with the version in the database and as JSON, and compared with
another version edit by edit.

- suites.py: the suites (the world's held-out sets; benchmark folders given by path)
- image_metrics.py: L1 / PSNR / SSIM outside the edit region
- clip_metrics.py: CLIP-I / CLIP-T / CLIP-direction with CLIP weights given by path
- editors.py: an inpainting or instruction editor on a suite
- rewards.py: a reward model on its held-out set, and on a model's own samples (reward drift)
- compare.py: two stored evaluations, edit by edit (exact McNemar test)
- records.py: the evaluations table and the JSON files
"""
