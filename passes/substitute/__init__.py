"""Substitutions: ops the target cannot run, rewritten into equivalent ops it can."""
