"""The ONNX-based IR: loading, structural checks, shapes, opset upgrades, editing and hashing.

mcc's IR is an `onnx.ModelProto`. Passes edit it through onnx-graphsurgeon (`to_graphsurgeon` /
`from_graphsurgeon`), graph analyses use a networkx view (`to_networkx`), and every model has a
stable content hash (`content_hash`) that later becomes the cache key of pass results.

Everything here that can fail because of the *input* raises `ModelError` with one line that names
what is wrong; nothing here prints.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import networkx as nx
import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper

from mcc.toolchain.errors import ModelError, UsageError

DEFAULT_DOMAINS = ("", "ai.onnx", None)  # onnx-graphsurgeon reports the default domain as None


# --------------------------------------------------------------------------------------------------
# Loading


def _all_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Initializers and tensor attributes of a graph and all its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _check_external_data(model: onnx.ModelProto, model_dir: Path) -> None:
    """Refuse external-data locations that are absolute or escape the model's folder."""
    root = model_dir.resolve()
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not location:
            raise ModelError(f"tensor '{tensor.name}' has external data without a location")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
            raise ModelError(
                f"tensor '{tensor.name}' has external data at absolute path '{location}'; "
                "only paths inside the model's folder are allowed"
            )
        resolved = (root / location).resolve()
        if resolved != root and root not in resolved.parents:
            raise ModelError(
                f"tensor '{tensor.name}' has external data '{location}' outside the model's folder"
            )
        if not resolved.is_file():
            raise ModelError(f"tensor '{tensor.name}' has external data '{location}', which does not exist")


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an `.onnx` file (with external data beside it) and check its structure.

    The returned model has external data loaded into memory, every node named, and nodes in
    topological order. It has not been shape-inferred or changed otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if not path.is_file():
        raise ModelError(f"{path}: not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a valid ONNX protobuf ({_first_line(exc) or 'parse error'})") from None
    if not data or model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelError(f"{path}: not an ONNX model (no IR version, graph or opset import)")
    _check_external_data(model, path.parent)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot load external data ({_first_line(exc)})") from None
    name_nodes(model.graph)
    check_structure(model)
    return model


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give every unnamed node a unique name `<op>_<index>` so errors can point at it."""
    taken = {node.name for node in graph.node if node.name}
    for index, node in enumerate(graph.node):
        if node.name:
            continue
        candidate = f"{node.op_type}_{index}"
        while candidate in taken:
            candidate += "_"
        node.name = candidate
        taken.add(candidate)


# --------------------------------------------------------------------------------------------------
# Structural checks


def check_structure(model: onnx.ModelProto) -> None:
    """Check what onnx.checker reports badly or not at all, then run onnx.checker.

    Order matters: a cycle or an undefined tensor makes the checker's message obscure
    ("nodes are not topologically sorted"), so those are found first with a clear line.
    Acyclic graphs whose nodes are merely out of order are sorted in place.
    """
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    sparse = {tensor.values.name for tensor in graph.sparse_initializer}
    inputs = {value.name for value in graph.input}
    produced: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for output in node.output:
            if not output:
                continue
            if output in produced:
                raise ModelError(
                    f"tensor '{output}' is produced twice (nodes '{produced[output].name}' and '{node.name}')"
                )
            produced[output] = node
    available = initializers | sparse | inputs | set(produced)
    for node in graph.node:
        for name in node.input:
            if name and name not in available:
                raise ModelError(
                    f"node '{node.name}' ({node.op_type}) reads '{name}', which no node, graph input "
                    "or initializer provides (missing initializer or dangling input)"
                )
    for output in graph.output:
        if output.name not in available:
            raise ModelError(f"graph output '{output.name}' is not produced by any node, input or initializer")

    view = to_networkx(model)
    try:
        cycle = nx.find_cycle(view)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [graph.node[edge[0]].name for edge in cycle] + [graph.node[cycle[0][0]].name]
        raise ModelError("graph is cyclic: " + " -> ".join(names))
    order = list(nx.lexicographical_topological_sort(view))
    if order != list(range(len(graph.node))):
        nodes = [onnx.NodeProto() for _ in order]
        for new, old in zip(nodes, order):
            new.CopyFrom(graph.node[old])
        del graph.node[:]
        graph.node.extend(nodes)

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"onnx checker: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("==>"):
            return line
    return text.splitlines()[0].strip() if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# Shapes


def infer_shapes(model: onnx.ModelProto, strict: bool = False) -> onnx.ModelProto:
    """Return a copy with value_info filled by onnx shape inference (with data propagation)."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=strict, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        raise ModelError(f"shape inference failed: {_first_line(exc)}") from None


def tensor_types(model: onnx.ModelProto) -> dict[str, tuple[int, tuple[int | str | None, ...] | None]]:
    """Map every typed tensor name to (elem_type, dims); a dim is int, a symbol, or None."""
    result: dict[str, tuple[int, tuple[int | str | None, ...] | None]] = {}
    graph = model.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            continue
        tensor_type = value.type.tensor_type
        dims = None
        if tensor_type.HasField("shape"):
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
            )
        result[value.name] = (tensor_type.elem_type, dims)
    for tensor in graph.initializer:
        result[tensor.name] = (tensor.data_type, tuple(tensor.dims))
    return result


def static_shape(dims: tuple[int | str | None, ...] | None) -> tuple[int, ...] | None:
    """The dims as ints when all are known, else None."""
    if dims is None or any(not isinstance(d, int) for d in dims):
        return None
    return tuple(int(d) for d in dims)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (not initializers listed as inputs, IR < 4 style)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def input_dims(value: onnx.ValueInfoProto) -> tuple[int | str | None, ...]:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse `NAME=1x3x224x224` (a scalar is `NAME=`)."""
    name, sep, dims_text = text.rpartition("=")
    if not sep or not name:
        raise UsageError(f"malformed --input-shape '{text}': expected NAME=DIMxDIM..., e.g. input=1x3x224x224")
    if dims_text == "":
        return name, ()
    dims = []
    for part in dims_text.lower().split("x"):
        if not part.isdigit() or int(part) <= 0:
            raise UsageError(
                f"malformed --input-shape '{text}': dimension '{part}' is not a positive integer"
            )
        dims.append(int(part))
    return name, tuple(dims)


def parse_const_input(text: str) -> tuple[str, list[int | float]]:
    """Parse `NAME=VALUE` or `NAME=V1,V2,...` (`--const-input`)."""
    name, sep, values_text = text.partition("=")
    if not sep or not name or not values_text:
        raise UsageError(f"malformed --const-input '{text}': expected NAME=VALUE or NAME=V1,V2,..., e.g. sr=16000")
    values: list[int | float] = []
    for part in values_text.split(","):
        try:  # integers stay exact (an int64 such as 2**63 - 1 does not survive a float)
            values.append(int(part))
        except ValueError:
            try:
                values.append(float(part))
            except ValueError:
                raise UsageError(f"malformed --const-input '{text}': '{part}' is not a number") from None
    return name, values


def specialize_inputs(model: onnx.ModelProto, values: dict[str, list[float]]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Turn the named graph inputs into constants (`--const-input`), so conditions on them fold.

    A single value fills the input's declared shape (which must then be static, or a scalar);
    a list must match the declared element count. Returns the model and the constants as arrays
    of the input's dtype (the original model is run with them as ordinary inputs).
    """
    model_inputs = {value.name: value for value in graph_inputs(model)}
    arrays: dict[str, np.ndarray] = {}
    for name, numbers in values.items():
        if name not in model_inputs:
            raise UsageError(f"--const-input names unknown input '{name}'; the model's inputs are: "
                             f"{', '.join(model_inputs)}")
        tensor_type = model_inputs[name].type.tensor_type
        dtype = tensor_dtype(tensor_type.elem_type)
        dims = input_dims(model_inputs[name]) if tensor_type.HasField("shape") else None
        shape = static_shape(dims) if dims is not None else (() if len(numbers) == 1 else (len(numbers),))
        if shape is None:
            raise UsageError(f"--const-input {name}: the input's shape {_dims_text(dims)} is not static; "
                             f"fix it with --input-shape first")
        size = int(np.prod(shape)) if shape else 1
        if len(numbers) not in (1, size):
            raise UsageError(f"--const-input {name}: {len(numbers)} values given, the input has {size}")
        if dtype.kind in "iub" and not all(isinstance(number, int) for number in numbers):
            raise UsageError(f"--const-input {name}: the input is {dtype.name}, the values are not integers")
        if dtype.kind in "iu":
            limits = np.iinfo(dtype)
            if any(not limits.min <= number <= limits.max for number in numbers):
                raise UsageError(f"--const-input {name}: a value is outside {dtype.name}'s range "
                                 f"[{limits.min}, {limits.max}]")
        array = np.array(numbers, dtype=object if dtype.kind in "iub" else np.float64)
        arrays[name] = np.broadcast_to(array, (size,)).reshape(shape).astype(dtype)
    return bind_inputs(model, arrays), arrays


def bind_inputs(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose named graph inputs are initializers holding these arrays
    (cast to each input's declared dtype)."""
    declared = {value.name: value for value in model.graph.input}
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    kept = [value for value in bound.graph.input if value.name not in arrays]
    del bound.graph.input[:]
    bound.graph.input.extend(kept)
    for name, array in arrays.items():
        dtype = tensor_dtype(declared[name].type.tensor_type.elem_type)
        bound.graph.initializer.append(numpy_helper.from_array(np.asarray(array).astype(dtype), name))
    return bound


@dataclass(frozen=True)
class FixedShapes:
    """Concrete input shapes chosen for compilation, and which dims mcc had to assume."""

    shapes: dict[str, tuple[int, ...]]
    assumed: dict[str, list[str]]


def fix_input_shapes(model: onnx.ModelProto, requested: dict[str, tuple[int, ...]]) -> tuple[onnx.ModelProto, FixedShapes]:
    """Make every graph input static.

    `requested` comes from `--input-shape`. A symbolic leading (batch) dim that is not requested
    becomes 1 and is reported as assumed; any other symbolic dim must be requested.
    """
    model_inputs = {value.name: value for value in graph_inputs(model)}
    unknown = sorted(set(requested) - set(model_inputs))
    if unknown:
        raise UsageError(
            f"--input-shape names unknown input '{unknown[0]}'; the model's inputs are: {', '.join(model_inputs)}"
        )
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    shapes: dict[str, tuple[int, ...]] = {}
    assumed: dict[str, list[str]] = {}
    for value in fixed.graph.input:
        if value.name not in model_inputs:
            continue
        if value.type.WhichOneof("value") != "tensor_type":
            raise ModelError(f"input '{value.name}' is not a tensor; only tensor inputs are supported")
        if not value.type.tensor_type.HasField("shape") and value.name not in requested:
            raise UsageError(f"input '{value.name}' has unknown rank; give its shape with --input-shape {value.name}=...")
        if value.type.tensor_type.elem_type == TensorProto.UNDEFINED:
            raise ModelError(f"input '{value.name}' has no element type")
        dims = input_dims(value) if value.type.tensor_type.HasField("shape") else (None,) * len(requested[value.name])
        if value.name in requested:
            want = requested[value.name]
            if len(want) != len(dims):
                raise UsageError(
                    f"--input-shape {value.name}: rank {len(want)} given, the model's input has rank {len(dims)} "
                    f"({_dims_text(dims)})"
                )
            for axis, (have, new) in enumerate(zip(dims, want)):
                if isinstance(have, int) and have > 0 and have != new:
                    raise UsageError(
                        f"--input-shape {value.name}: dim {axis} is {have} in the model, {new} given"
                    )
            concrete = want
        else:
            concrete_list = []
            for axis, dim in enumerate(dims):
                if isinstance(dim, int) and dim > 0:
                    concrete_list.append(dim)
                elif axis == 0:
                    concrete_list.append(1)
                    assumed.setdefault(value.name, []).append(f"dim 0 ({dim or '?'}) = 1")
                else:
                    raise UsageError(
                        f"input '{value.name}' has symbolic dims ({_dims_text(dims)}); "
                        f"give them with --input-shape {value.name}=" + "x".join(
                            str(d) if isinstance(d, int) and d > 0 else "N" for d in dims
                        )
                    )
            concrete = tuple(concrete_list)
        shapes[value.name] = concrete
        shape_proto = value.type.tensor_type.shape
        del shape_proto.dim[:]
        for dim in concrete:
            shape_proto.dim.add().dim_value = dim
    # Stale symbolic value_info would fight the new static shapes during inference; symbolic
    # output shapes are replaced by the inferred ones.
    del fixed.graph.value_info[:]
    for output in fixed.graph.output:
        tensor_type = output.type.tensor_type
        if tensor_type.HasField("shape") and any(not d.HasField("dim_value") for d in tensor_type.shape.dim):
            tensor_type.ClearField("shape")
    inferred = {value.name: value for value in infer_shapes(fixed).graph.output}
    for output in fixed.graph.output:
        tensor_type = output.type.tensor_type
        if not tensor_type.HasField("shape") and output.name in inferred:
            new_type = inferred[output.name].type.tensor_type
            if new_type.HasField("shape"):
                tensor_type.shape.CopyFrom(new_type.shape)
    return fixed, FixedShapes(shapes=shapes, assumed=assumed)


def _dims_text(dims: tuple[int | str | None, ...]) -> str:
    return "x".join(str(d) if d not in (None, "") else "?" for d in dims) or "scalar"


# --------------------------------------------------------------------------------------------------
# Opsets


def opset_version(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in DEFAULT_DOMAINS:
            return opset.version
    return 1


def upgrade_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """Convert the default-domain opset up to `version` with onnx's version converter."""
    current = opset_version(model)
    if current >= version:
        return model
    if not any(opset.domain in DEFAULT_DOMAINS for opset in model.opset_import):
        # no default-domain op to convert (an ai.onnx.ml-only model): just declare the opset
        declared = onnx.ModelProto()
        declared.CopyFrom(model)
        declared.opset_import.append(onnx.helper.make_opsetid("", version))
        return declared
    try:
        converted = onnx.version_converter.convert_version(model, version)
    except Exception as exc:  # the converter raises bare RuntimeError/IndexError on unsupported adapters
        raise ModelError(f"cannot upgrade opset {current} -> {version}: {_first_line(exc)}") from None
    converted.ir_version = max(model.ir_version, _min_ir_version(converted))
    name_nodes(converted.graph)
    return converted


def _min_ir_version(model: onnx.ModelProto) -> int:
    try:
        return onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except (TypeError, ValueError):
        return model.ir_version


# --------------------------------------------------------------------------------------------------
# Editing, views, hashing


def to_graphsurgeon(model: onnx.ModelProto):
    """Import into an onnx-graphsurgeon Graph for editing."""
    import onnx_graphsurgeon as gs

    return gs.import_onnx(model)


def from_graphsurgeon(graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export an edited graph, keeping the model-level fields of `like` (IR version, metadata)."""
    import onnx_graphsurgeon as gs

    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    # IR < 4 requires every initializer to be listed as an input; edits add initializers that
    # are not, so the result is at least IR 4 (where listing them is optional).
    model.ir_version = max(like.ir_version, 4)
    model.producer_name = like.producer_name
    model.producer_version = like.producer_version
    model.domain = like.domain
    model.model_version = like.model_version
    model.doc_string = like.doc_string
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    name_nodes(model.graph)
    return model


def to_networkx(model: onnx.ModelProto) -> nx.MultiDiGraph:
    """Node-level dataflow graph: nodes are node indices, edges carry the tensor name.

    Node attributes: `op` (op_type) and `name`. Graph inputs, initializers and outputs are not
    nodes; analyses that need them read the model.
    """
    view = nx.MultiDiGraph()
    producers: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        view.add_node(index, op=node.op_type, name=node.name)
        for output in node.output:
            if output:
                producers[output] = index
    for index, node in enumerate(model.graph.node):
        for name in node.input:
            if name in producers:
                view.add_edge(producers[name], index, tensor=name)
    return view


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... whichever is not in `taken`; the result is added to it."""
    name, counter = base, 0
    while name in taken:
        counter += 1
        name = f"{base}_{counter}"
    taken.add(name)
    return name


def rename_reads(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Point every reader of a renamed tensor at its new name, in nested subgraphs too (they may
    read outer names)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                rename_reads(sub, renames)


def names_in_use(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name of `graph` (its top level), for `unique_name`."""
    names = {name for node in graph.node for name in list(node.input) + list(node.output)}
    names |= {t.name for t in graph.initializer} | {v.name for v in graph.input} | {v.name for v in graph.output}
    return names | {node.name for node in graph.node}


def content_hash(model: onnx.ModelProto) -> str:
    """SHA-256 of the deterministic serialization: same model, same hash, across runs."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def tensor_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def replace_body(graph: onnx.GraphProto, nodes: list[onnx.NodeProto],
                 new_initializers: list[onnx.TensorProto] = ()) -> None:
    """`graph`'s nodes become `nodes`; initializers nothing reads any more (nodes, If/Loop
    bodies, graph inputs and outputs) are dropped, `new_initializers` added, and the stale
    value_info cleared."""
    nodes = list(nodes)
    read = {name for node in nodes for name in node.input}
    read |= set().union(*(subgraph_reads(node) for node in nodes))
    read |= {value.name for value in graph.input} | {value.name for value in graph.output}
    kept = [tensor for tensor in graph.initializer if tensor.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept + list(new_initializers))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Outer-scope tensors read by a node's subgraphs (If/Loop/Scan bodies), recursively."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for graph in graphs:
            local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
            for inner in graph.node:
                local.update(inner.output)
            for inner in graph.node:
                names.update(name for name in inner.input if name and name not in local)
                names.update(name for name in subgraph_reads(inner) if name not in local)
    return names
