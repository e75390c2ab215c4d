"""The one training loop: optimiser, schedule, accumulation, checkpoints, metrics."""
