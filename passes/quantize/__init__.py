"""Precision conversion and quantization passes."""
