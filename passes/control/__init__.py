"""Control-flow passes (If/Loop)."""
