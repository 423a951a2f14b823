"""Toxicity classification from SAE features (issue 10): labelled data, the feature rule, baselines."""
