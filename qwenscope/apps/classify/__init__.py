"""Data workflows: feature-based toxicity classification (the report, section 5) with baselines."""
