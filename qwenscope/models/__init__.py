"""Language models: loading, hookpoint names, capture and splice. Never re-implements a model."""
