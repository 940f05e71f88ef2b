"""Training: one loop for both families, checkpoints, distributed helpers."""
