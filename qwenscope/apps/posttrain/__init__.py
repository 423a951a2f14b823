"""Post-training with SAE features: SASFT against code-switching, GRPO with steered negatives against repetition."""
