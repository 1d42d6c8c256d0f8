"""The one training loop (device, AMP, DDP, logging, checkpoints)."""
