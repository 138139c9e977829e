"""Simplifications that keep the computed function exactly: folding, dead code, no-op removal."""
