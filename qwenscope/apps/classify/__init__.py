"""Toxicity classification with a handful of SAE features, and the baselines it is compared with."""
