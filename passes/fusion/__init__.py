"""Fusions that merge neighbouring ops into one (algebra in each module's docstring)."""
