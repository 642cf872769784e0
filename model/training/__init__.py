"""Fitting an AFM: the training loop, its optimizer and multi-worker training."""
