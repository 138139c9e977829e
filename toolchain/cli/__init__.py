"""The `mcc` command line (click). Heavy imports (tvm, onnxruntime) stay inside commands."""
