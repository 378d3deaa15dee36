"""Real Keras and real PyTorch: exact resume, safety, mismatches."""
