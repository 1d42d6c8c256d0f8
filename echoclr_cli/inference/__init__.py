"""Running a trained model: evaluate, predict, export."""
