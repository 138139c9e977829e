"""Mixed precision under an accuracy budget: int8 where it costs little, float32 where it costs most.

`mcc compile --precision mixed --calib-data C --eval-data E (--max-accuracy-drop POINTS | --min-sqnr-db DB)`

1. Calibrate once (quantize-int8's calibrator), quantize every Conv/MatMul/Gemm, measure the
   metric on the evaluation data with onnxruntime:
   - with labels in the evaluation data: top-1 accuracy, the budget a drop in points against float32;
   - without: output fidelity, the SQNR (dB) of all outputs against the float32 model's.
2. Per-layer sensitivity: each layer quantized alone (the rest float32), its metric measured.
3. If the all-int8 model misses the budget, the most sensitive layers fall back to float32 one at
   a time, re-measured after each, until the budget holds. Falling back every layer is the
   float32 model, which meets any budget >= 0; a layer whose fallback is never needed stays int8.
4. With `--fallback-precision fp16` (targets whose fp16 is fast), the fallback layers then run in
   float16 if the budget still holds so; otherwise they stay float32 and the report says so.

The report (`precision_search`) lists each layer's precision and sensitivity (the metric with
only that layer in int8), the metric of float32, of all-int8 and of the chosen model, and whether
the budget holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from mcc.passes.quantize.int8 import QuantizeInt8
from mcc.toolchain import ir
from mcc.toolchain.errors import UsageError
from mcc.toolchain.passmanager import PassContext

#: the key of the labels array in an --eval-data .npz
LABELS_KEY = "labels"


@dataclass(frozen=True)
class Budget:
    """At most `max_accuracy_drop` top-1 points lost (needs labels), or at least `min_sqnr_db` dB
    of output fidelity against float32."""

    max_accuracy_drop: float | None = None
    min_sqnr_db: float | None = None

    def __post_init__(self) -> None:
        if self.max_accuracy_drop is None and self.min_sqnr_db is None:
            raise UsageError("--precision mixed needs a budget: --max-accuracy-drop POINTS (with labels in "
                             "--eval-data) or --min-sqnr-db DB")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise UsageError(f"--max-accuracy-drop must be >= 0 points, not {self.max_accuracy_drop}")

    @property
    def metric(self) -> str:
        return "top1" if self.max_accuracy_drop is not None else "sqnr_db"

    def holds(self, value: float, reference: float) -> bool:
        if self.metric == "top1":
            return reference - value <= self.max_accuracy_drop + 1e-9
        return value >= self.min_sqnr_db


@dataclass
class EvalData:
    feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray | None


def load_eval_data(path: str | Path, model: onnx.ModelProto) -> EvalData:
    """An .npz with one array per graph input (first axis = samples) and optionally `labels`
    (one class index per sample)."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        raise UsageError(f"--eval-data {path}: expected an existing .npz (one array per input, first axis = "
                         f"samples, and '{LABELS_KEY}' for top-1)")
    try:
        with np.load(path) as npz:
            arrays = dict(npz)
    except Exception as exc:  # a corrupt or non-npz file
        raise UsageError(f"--eval-data {path}: not a readable .npz ({exc})") from None
    inputs = ir.graph_inputs(model)
    missing = [value.name for value in inputs if value.name not in arrays]
    if missing:
        raise UsageError(f"--eval-data {path}: no array for input(s) {', '.join(missing)} "
                         f"(it has {', '.join(sorted(arrays)) or 'none'})")
    counts = {len(arrays[value.name]) for value in inputs}
    labels = arrays.get(LABELS_KEY)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        counts.add(len(labels))
    if len(counts) != 1 or 0 in counts:
        raise UsageError(f"--eval-data {path}: the arrays disagree on the number of samples ({sorted(counts)})")
    shapes = {name: shape for name, (_, shape) in ir.tensor_types(model).items()}
    feeds = []
    for i in range(counts.pop()):
        feed = {}
        for value in inputs:
            sample = np.asarray(arrays[value.name][i])
            want = shapes.get(value.name)
            if want is not None and all(isinstance(d, int) for d in want) and sample.shape != tuple(want):
                if sample.size != int(np.prod(want)):
                    raise UsageError(f"--eval-data {path}: sample of '{value.name}' has shape {sample.shape}, "
                                     f"the model wants {tuple(want)}")
                sample = sample.reshape(want)
            feed[value.name] = sample.astype(np.float32) if sample.dtype == np.float64 else sample
        feeds.append(feed)
    return EvalData(feeds, labels)


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - candidate) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0:
        return float("inf")
    return 10 * np.log10(signal / noise) if signal > 0 else float("-inf")


class Evaluator:
    """The metric of a model on the evaluation data, under onnxruntime (models as written)."""

    def __init__(self, reference_model: onnx.ModelProto, data: EvalData, budget: Budget):
        if budget.metric == "top1" and data.labels is None:
            raise UsageError(f"--max-accuracy-drop needs labels: an array '{LABELS_KEY}' in --eval-data "
                             "(or use --min-sqnr-db for output fidelity)")
        self.data, self.budget = data, budget
        self.evaluations = 0
        self._top5: dict[int, tuple[onnx.ModelProto, float]] = {}  # id -> (model, top-5) of measured models
        self.reference_outputs = self._outputs(reference_model)
        self.reference = self.measure(reference_model, outputs=self.reference_outputs)

    def _outputs(self, model: onnx.ModelProto) -> np.ndarray:
        from mcc.backends.onnxruntime import ReferenceRunner

        runner = ReferenceRunner(model)
        self.evaluations += 1
        flat = [np.concatenate([np.asarray(o, np.float64).reshape(-1) for o in runner.run(feed)])
                for feed in self.data.feeds]
        return np.stack(flat)

    def measure(self, model: onnx.ModelProto, outputs: np.ndarray | None = None) -> float:
        outputs = self._outputs(model) if outputs is None else outputs
        if self.data.labels is not None:  # kept for the report, no second run (the model keeps its id)
            self._top5[id(model)] = (model, self._top_k(model, outputs, 5))
        if self.budget.metric == "top1":
            return self._top_k(model, outputs, 1)
        return sqnr_db(self.reference_outputs, outputs)

    def top5(self, model: onnx.ModelProto) -> float | None:
        """Top-5 % with labels (None without); from the measurement when the model was measured."""
        if self.data.labels is None:
            return None
        if id(model) not in self._top5:
            self.measure(model)
        return self._top5[id(model)][1]

    def _top_k(self, model: onnx.ModelProto, outputs: np.ndarray, k: int) -> float:
        scores = outputs[:, :self._first_output_size(model)]
        best = np.argsort(-scores, axis=1)[:, :k]
        return float(100.0 * np.mean(np.any(best == self.data.labels[:, None], axis=1)))

    @staticmethod
    def _first_output_size(model: onnx.ModelProto) -> int:
        shape = ir.tensor_types(ir.infer_shapes(model)).get(model.graph.output[0].name, (None, None))[1]
        if shape is None or not all(isinstance(d, int) for d in shape):
            raise UsageError("top-1 needs the model's first output to have a static shape (the class scores)")
        return int(np.prod(shape))


@dataclass
class SearchResult:
    model: onnx.ModelProto
    report: dict = field(default_factory=dict)


def _name_targets(model: onnx.ModelProto, quantize: QuantizeInt8) -> onnx.ModelProto:
    """The model with every quantizable node named (fallback is by name)."""
    targets = quantize.targets(model, all_nodes=True)
    if all(node.name for node in targets.values()):
        return model
    named = onnx.ModelProto()
    named.CopyFrom(model)
    taken = ir.names_in_use(named.graph)
    for index in targets:
        node = named.graph.node[index]
        if not node.name:
            node.name = ir.unique_name(f"{node.op_type}_{index}", taken)
    return named


def search(model: onnx.ModelProto, quantize: QuantizeInt8, data: EvalData, budget: Budget,
           ctx: PassContext, fallback: str = "fp32") -> SearchResult:
    """The mixed-precision model meeting `budget` with the most layers in int8 (greedy by
    sensitivity), and its report. `fallback`: the precision of the layers taken out of int8,
    fp32, or fp16 where it still meets the budget (for targets whose fp16 is fast)."""
    if fallback not in ("fp32", "fp16"):
        raise UsageError(f"the fallback precision must be fp32 or fp16, not '{fallback}'")
    model = _name_targets(model, quantize)
    evaluator = Evaluator(model, data, budget)
    ranges, samples = quantize.calibrate(model, ctx)
    layers = [node for _, node in sorted(quantize.targets(model, all_nodes=True).items())]
    names = [node.name for node in layers]

    def quantized(excluded: list[str]) -> onnx.ModelProto:
        options = {**quantize.non_default_options(), "exclude": ",".join(excluded)}
        return QuantizeInt8(**options).apply(model, ranges, ctx).model

    total = len(layers) + 1
    done = 0

    def step():
        nonlocal done
        done += 1
        ctx.report_progress("precision search", done, total)

    all_int8_model = quantized([])
    all_int8 = evaluator.measure(all_int8_model)
    step()
    sensitivity: dict[str, float] = {}
    for name in names:
        sensitivity[name] = evaluator.measure(quantized([n for n in names if n != name]))
        step()

    # most sensitive first: the lowest top-1, or the lowest fidelity, with only that layer in int8
    order = sorted(names, key=lambda n: sensitivity[n])
    fallback_layers: list[str] = []
    current, value = None, all_int8
    while not budget.holds(value, evaluator.reference) and len(fallback_layers) < len(names):
        fallback_layers.append(order[len(fallback_layers)])
        current = quantized(fallback_layers)
        value = evaluator.measure(current)
    if current is None:  # all-int8 meets the budget
        current = all_int8_model
    if len(fallback_layers) == len(names):
        current = model  # nothing left in int8: the float32 model itself
    fallback_precision = "fp32"
    if fallback_layers and fallback == "fp16":
        from mcc.passes.quantize.fp16 import ConvertFloat16

        halved = ConvertFloat16(nodes=",".join(fallback_layers)).run(current, ctx).model
        halved_value = evaluator.measure(halved)
        if budget.holds(halved_value, evaluator.reference):
            current, value, fallback_precision = halved, halved_value, "fp16"
        else:
            ctx.note(f"precision search: the fallback layers in fp16 miss the budget ({_rounded(halved_value)}); "
                     "they stay fp32")
    met = budget.holds(value, evaluator.reference)
    top5 = {}
    if data.labels is not None:
        top5 = {"top5": {"fp32": _rounded(evaluator.top5(model)), "all_int8": _rounded(evaluator.top5(all_int8_model)),
                         "chosen": _rounded(evaluator.top5(current))}}
    report = {
        "metric": "top-1 %" if budget.metric == "top1" else "SQNR dB (all outputs, against float32)",
        "budget": (f"top-1 drop <= {budget.max_accuracy_drop} points" if budget.metric == "top1"
                   else f"SQNR >= {budget.min_sqnr_db} dB"),
        "evaluation_samples": len(data.feeds),
        "calibration_samples": samples,
        "fp32": _rounded(evaluator.reference),
        "all_int8": _rounded(all_int8),
        "chosen": _rounded(value),
        "budget_met": bool(met),
        "int8_layers": len(names) - len(fallback_layers),
        "fallback_precision": fallback_precision,
        "fp32_layers": len(fallback_layers) if fallback_precision == "fp32" else 0,
        "fp16_layers": len(fallback_layers) if fallback_precision == "fp16" else 0,
        "evaluations": evaluator.evaluations,
        "layers": [{"node": node.name, "op": node.op_type,
                    "precision": fallback_precision if node.name in fallback_layers else "int8",
                    "sensitivity": _rounded(sensitivity[node.name])} for node in layers],
        **top5,
    }
    ctx.note(f"precision search: {report['int8_layers']} of {len(names)} layer(s) int8, {len(fallback_layers)} "
             f"{fallback_precision}; "
             f"{report['metric']} {report['chosen']} (fp32 {report['fp32']}, all-int8 {report['all_int8']}); "
             f"budget {report['budget']} {'met' if met else 'NOT met'}")
    return SearchResult(current, report)


def _rounded(value: float):
    return None if not np.isfinite(value) else round(float(value), 4)


def measure_against_budget(model: onnx.ModelProto, quantized: onnx.ModelProto, data: EvalData,
                           budget: Budget | None) -> dict:
    """`--precision int8 --eval-data E`: the metric of float32 and of the int8 model, and whether
    the budget (if any) holds; no search."""
    if budget is None:
        budget = Budget(max_accuracy_drop=float("inf")) if data.labels is not None else Budget(
            min_sqnr_db=float("-inf"))
    evaluator = Evaluator(model, data, budget)
    value = evaluator.measure(quantized)
    report = {
        "metric": "top-1 %" if budget.metric == "top1" else "SQNR dB (all outputs, against float32)",
        "evaluation_samples": len(data.feeds),
        "fp32": _rounded(evaluator.reference),
        "int8": _rounded(value),
        "budget_met": bool(budget.holds(value, evaluator.reference)),
    }
    if np.isfinite(budget.max_accuracy_drop if budget.max_accuracy_drop is not None else budget.min_sqnr_db):
        report["budget"] = (f"top-1 drop <= {budget.max_accuracy_drop} points" if budget.metric == "top1"
                            else f"SQNR >= {budget.min_sqnr_db} dB")
    if data.labels is not None:
        report["top5"] = {"fp32": _rounded(evaluator.top5(model)), "int8": _rounded(evaluator.top5(quantized))}
    return report
