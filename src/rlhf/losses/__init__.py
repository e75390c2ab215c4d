"""Losses: pure functions of tensors returning (loss, metrics), one per variant."""
