"""Training: configuration, the training loop, checkpoints, and data loading."""
