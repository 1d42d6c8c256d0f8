"""`echoclr preprocess`: raw archive -> de-identified dataset dir."""
