"""Datasets: MovieLens and synthetic data read, split into training rows, loaded into Redis."""
