"""The typed config tree, its YAML/--set layering and the published recipe."""
