"""Metrics over predictions: AUROC/AUPR, bootstrap CIs, DeLong, aggregation."""
