"""Synthetic data sets with known object masks, for the bundled demo models and for tests."""
