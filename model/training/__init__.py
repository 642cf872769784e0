"""Fitting an AFM: the training loop (``train``) over its row sources (``rows``), with its
metrics, curve, progress bar, optimizer and multi-worker training (``distributed``)."""
