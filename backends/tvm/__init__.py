"""TVM backends, one module per target family with the same phase functions (import, build, export, load)."""
