"""distill: students from teachers (pruning, divergence losses, training)."""
