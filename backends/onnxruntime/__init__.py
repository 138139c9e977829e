"""onnxruntime as the reference: it runs the *original* model to produce expected outputs."""

from mcc.backends.onnxruntime.reference import ReferenceRunner

__all__ = ["ReferenceRunner"]
