"""Whole training runs in subprocesses: kills, pre-emption, DDP, the examples."""
