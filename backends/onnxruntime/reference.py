"""Reference execution of the original model with onnxruntime (CPU)."""

from __future__ import annotations

import numpy as np
import onnx

from mcc.toolchain.errors import ModelError


class ReferenceRunner:
    """An onnxruntime session over a model, with every optimization at `optimization` level."""

    def __init__(self, model: onnx.ModelProto, optimization: str = "all", threads: int = 0):
        import onnxruntime as ort

        levels = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[optimization]
        options.log_severity_level = 4
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's exception types are not importable stably
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime cannot load the model: {first}") from None
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.input_names = [value.name for value in self.session.get_inputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        feed = {name: inputs[name] for name in self.input_names if name in inputs}
        try:
            return [np.asarray(x) for x in self.session.run(self.output_names, feed)]
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"onnxruntime cannot run the model on these inputs: {first} (give real inputs with --inputs)"
            ) from None
