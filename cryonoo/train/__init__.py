"""Training: recipes (frozen configs), the training loop, checkpoints and run directories."""
