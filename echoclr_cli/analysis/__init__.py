"""What a model learned: embeddings and saliency."""
