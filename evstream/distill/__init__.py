"""Offline training: datasets (data.py), EvDistill losses, metrics, the trainer and its config."""
