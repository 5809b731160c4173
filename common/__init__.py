"""Pieces training, sampling and evaluation share: checkpoints, device, run lock, CLI types, progress."""
