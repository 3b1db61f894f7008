"""splat."""
