"""Archive layouts: which files, which ids."""
