"""Architectures, weight loading, checkpoints, SyncBatchNorm."""
