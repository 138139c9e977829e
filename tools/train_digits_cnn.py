#!/usr/bin/env python3
"""Train a small CNN on scikit-learn's ``load_digits`` in pure NumPy and export it to ONNX.

The resulting model is a compact, realistic test input for the mcc compiler:

    image [batch,1,8,8]
      -> Conv 3x3 (16) -> BatchNormalization -> Relu -> MaxPool 2x2
      -> Conv 3x3 (32) -> BatchNormalization -> Relu -> Identity -> MaxPool 2x2
      -> Shape -> Gather(0) -> Unsqueeze -> Concat([-1]) -> Reshape   (run-time flatten)
      -> Dropout (inference mode) -> Gemm -> logits [batch,10]

The flatten is deliberately exported the way a PyTorch export usually writes it
(a shape computed at run time), and a harmless ``Identity`` node is included, so
that the compiler's constant-folding / shape / cleanup passes have work to do.

The network input expects pixel values already scaled to 0..1, i.e. ``x / 16``
of the raw ``load_digits`` values.  Everything is deterministic: running the
script twice produces a byte-identical ``.onnx`` file.

Usage::

    python tools/train_digits_cnn.py [--out-dir examples]
"""

from __future__ import annotations

import argparse
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
EPOCHS = 40
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
DROPOUT_RATIO = 0.25
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention: running = (1 - m) * running + m * batch
CHANNELS = (16, 32)
NUM_CLASSES = 10
OPSET = 17
IR_VERSION = 8
MIN_ACCURACY = 0.95


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, x_test, y_train, y_test)`` with images as [N,1,8,8] in 0..1."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float64)[:, None, :, :]
    return train_test_split(
        images, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )


# ---------------------------------------------------------------------------
# Layer primitives (forward and backward)
# ---------------------------------------------------------------------------


def im2col_3x3(x: np.ndarray) -> np.ndarray:
    """Unfold 3x3 patches of ``x`` [N,C,H,W] (pad 1) into rows [N*H*W, C*9].

    Columns are ordered (channel, kernel row, kernel column), matching a
    weight tensor [O,C,3,3] reshaped to [O, C*9].
    """
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack(
        [padded[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=-1
    )
    return patches.transpose(0, 2, 3, 1, 4).reshape(n * h * w, c * 9)


def col2im_3x3(cols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Adjoint of :func:`im2col_3x3`: fold row gradients back into an [N,C,H,W] gradient."""
    n, c, h, w = shape
    cols = cols.reshape(n, h, w, c, 3, 3)
    padded = np.zeros((n, c, h + 2, w + 2), dtype=cols.dtype)
    for i in range(3):
        for j in range(3):
            padded[:, :, i : i + h, j : j + w] += cols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return padded[:, :, 1:-1, 1:-1]


def conv_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray):
    """3x3 convolution, stride 1, pad 1. Returns output [N,O,H,W] and a backward cache."""
    n, _, h, w = x.shape
    cols = im2col_3x3(x)
    out = cols @ weight.reshape(weight.shape[0], -1).T + bias
    return out.reshape(n, h, w, -1).transpose(0, 3, 1, 2), (x.shape, cols, weight)


def conv_backward(dout: np.ndarray, cache):
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv_forward`."""
    x_shape, cols, weight = cache
    d = dout.transpose(0, 2, 3, 1).reshape(-1, weight.shape[0])
    dweight = (d.T @ cols).reshape(weight.shape)
    dbias = d.sum(axis=0)
    dx = col2im_3x3(d @ weight.reshape(weight.shape[0], -1), x_shape)
    return dx, dweight, dbias


def batchnorm_forward(x, gamma, beta, running_mean, running_var, training: bool):
    """Per-channel batch normalisation of [N,C,H,W].

    In training mode batch statistics are used and the running statistics are
    updated in place (unbiased variance, as PyTorch does); in inference mode the
    running statistics are used, exactly like ONNX ``BatchNormalization``.
    """
    shape = (1, -1, 1, 1)
    if training:
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        count = x.size // x.shape[1]
        running_mean *= 1.0 - BN_MOMENTUM
        running_mean += BN_MOMENTUM * mean
        running_var *= 1.0 - BN_MOMENTUM
        running_var += BN_MOMENTUM * var * count / (count - 1)
    else:
        mean, var = running_mean, running_var
    inv_std = 1.0 / np.sqrt(var + BN_EPSILON)
    x_hat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
    return gamma.reshape(shape) * x_hat + beta.reshape(shape), (x_hat, inv_std, gamma)


def batchnorm_backward(dout: np.ndarray, cache):
    """Gradients ``(dx, dgamma, dbeta)`` of training-mode :func:`batchnorm_forward`."""
    x_hat, inv_std, gamma = cache
    shape = (1, -1, 1, 1)
    axes = (0, 2, 3)
    count = dout.size // dout.shape[1]
    dgamma = (dout * x_hat).sum(axis=axes)
    dbeta = dout.sum(axis=axes)
    dx_hat = dout * gamma.reshape(shape)
    dx = (
        inv_std.reshape(shape)
        / count
        * (
            count * dx_hat
            - dx_hat.sum(axis=axes).reshape(shape)
            - x_hat * (dx_hat * x_hat).sum(axis=axes).reshape(shape)
        )
    )
    return dx, dgamma, dbeta


def maxpool_forward(x: np.ndarray):
    """2x2 max pooling with stride 2. Returns output and the argmax cache for backward."""
    n, c, h, w = x.shape
    windows = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(n, c, h // 2, w // 2, 4)
    index = windows.argmax(axis=-1)[..., None]
    return np.take_along_axis(windows, index, axis=-1)[..., 0], (x.shape, index)


def maxpool_backward(dout: np.ndarray, cache) -> np.ndarray:
    """Route each pooled gradient to the (first) maximal element of its window."""
    (n, c, h, w), index = cache
    dwindows = np.zeros((n, c, h // 2, w // 2, 4), dtype=dout.dtype)
    np.put_along_axis(dwindows, index, dout[..., None], axis=-1)
    dwindows = dwindows.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    return dwindows.reshape(n, c, h, w)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """Mean cross-entropy loss and its gradient with respect to ``logits``."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    loss = -log_probs[np.arange(n), labels].mean()
    grad = np.exp(log_probs)
    grad[np.arange(n), labels] -= 1.0
    return loss, grad / n


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


class DigitsCNN:
    """Two conv blocks plus a linear classifier, with hand-written backward pass."""

    def __init__(self, rng: np.random.Generator):
        c1, c2 = CHANNELS
        flat = c2 * 2 * 2

        def he(shape, fan_in):
            return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)

        self.params = {
            "conv1.weight": he((c1, 1, 3, 3), 9),
            "conv1.bias": np.zeros(c1),
            "bn1.weight": np.ones(c1),
            "bn1.bias": np.zeros(c1),
            "conv2.weight": he((c2, c1, 3, 3), c1 * 9),
            "conv2.bias": np.zeros(c2),
            "bn2.weight": np.ones(c2),
            "bn2.bias": np.zeros(c2),
            "fc.weight": rng.normal(0.0, np.sqrt(1.0 / flat), size=(NUM_CLASSES, flat)),
            "fc.bias": np.zeros(NUM_CLASSES),
        }
        self.buffers = {
            "bn1.running_mean": np.zeros(c1),
            "bn1.running_var": np.ones(c1),
            "bn2.running_mean": np.zeros(c2),
            "bn2.running_var": np.ones(c2),
        }

    def parameter_count(self) -> int:
        """Number of trainable parameters (running statistics excluded)."""
        return sum(p.size for p in self.params.values())

    def forward(self, x, training=False, rng=None):
        """Compute logits for ``x`` [N,1,8,8]; returns ``(logits, caches)``."""
        p, b = self.params, self.buffers
        caches = {}
        h = x
        for i in (1, 2):
            h, caches[f"conv{i}"] = conv_forward(h, p[f"conv{i}.weight"], p[f"conv{i}.bias"])
            h, caches[f"bn{i}"] = batchnorm_forward(
                h,
                p[f"bn{i}.weight"],
                p[f"bn{i}.bias"],
                b[f"bn{i}.running_mean"],
                b[f"bn{i}.running_var"],
                training,
            )
            caches[f"relu{i}"] = h > 0
            h = h * caches[f"relu{i}"]
            h, caches[f"pool{i}"] = maxpool_forward(h)
        caches["pool2_shape"] = h.shape
        h = h.reshape(h.shape[0], -1)
        if training:
            keep = rng.random(h.shape) >= DROPOUT_RATIO
            caches["dropout"] = keep / (1.0 - DROPOUT_RATIO)
            h = h * caches["dropout"]
        caches["fc_input"] = h
        return h @ p["fc.weight"].T + p["fc.bias"], caches

    def backward(self, dlogits, caches) -> dict[str, np.ndarray]:
        """Gradients of every parameter given d(loss)/d(logits) from a training forward."""
        p = self.params
        grads = {
            "fc.weight": dlogits.T @ caches["fc_input"],
            "fc.bias": dlogits.sum(axis=0),
        }
        dh = dlogits @ p["fc.weight"] * caches["dropout"]
        dh = dh.reshape(caches["pool2_shape"])
        for i in (2, 1):
            dh = maxpool_backward(dh, caches[f"pool{i}"])
            dh = dh * caches[f"relu{i}"]
            dh, grads[f"bn{i}.weight"], grads[f"bn{i}.bias"] = batchnorm_backward(
                dh, caches[f"bn{i}"]
            )
            dh, grads[f"conv{i}.weight"], grads[f"conv{i}.bias"] = conv_backward(
                dh, caches[f"conv{i}"]
            )
        return grads

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        """Inference-mode logits (running BN statistics, no dropout)."""
        return self.forward(x, training=False)[0]


class Adam:
    """Adam optimiser; L2 weight decay is added to the conv and fc weight gradients."""

    def __init__(self, params: dict[str, np.ndarray], lr: float, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads: dict[str, np.ndarray], lr: float) -> None:
        """Apply one update in place using learning rate ``lr``."""
        self.t += 1
        b1, b2 = self.betas
        for name, param in self.params.items():
            g = grads[name]
            if name.endswith(".weight") and not name.startswith("bn"):
                g = g + WEIGHT_DECAY * param
            self.m[name] = b1 * self.m[name] + (1 - b1) * g
            self.v[name] = b2 * self.v[name] + (1 - b2) * g * g
            m_hat = self.m[name] / (1 - b1**self.t)
            v_hat = self.v[name] / (1 - b2**self.t)
            param -= lr * m_hat / (np.sqrt(v_hat) + self.eps)


def train(model: DigitsCNN, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
    """Mini-batch Adam training with a cosine learning-rate schedule."""
    optimizer = Adam(model.params, LEARNING_RATE)
    steps_per_epoch = int(np.ceil(len(x) / BATCH_SIZE))
    total_steps = EPOCHS * steps_per_epoch
    step = 0
    for epoch in range(1, EPOCHS + 1):
        order = rng.permutation(len(x))
        losses = []
        for start in range(0, len(x), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            logits, caches = model.forward(x[idx], training=True, rng=rng)
            loss, dlogits = softmax_cross_entropy(logits, y[idx])
            lr = 0.5 * LEARNING_RATE * (1 + np.cos(np.pi * step / total_steps))
            optimizer.step(model.backward(dlogits, caches), lr)
            losses.append(loss)
            step += 1
        if epoch % 10 == 0 or epoch == 1:
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}")


# ---------------------------------------------------------------------------
# ONNX export
# ---------------------------------------------------------------------------


def export_onnx(model: DigitsCNN) -> onnx.ModelProto:
    """Build the inference graph (see module docstring) with float32 weights."""
    tensors = {**model.params, **model.buffers}
    initializers = [
        numpy_helper.from_array(value.astype(np.float32), name)
        for name, value in sorted(tensors.items())
    ]
    initializers.append(
        numpy_helper.from_array(np.array(DROPOUT_RATIO, dtype=np.float32), "dropout.ratio")
    )

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node(
            "Constant",
            [],
            [name],
            name=f"/{name}/Constant",
            value=numpy_helper.from_array(value, f"{name}_value"),
        )

    nodes = []
    h = "image"
    for i in (1, 2):
        nodes += [
            helper.make_node(
                "Conv",
                [h, f"conv{i}.weight", f"conv{i}.bias"],
                [f"conv{i}_out"],
                name=f"/conv{i}/Conv",
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[1, 1],
            ),
            helper.make_node(
                "BatchNormalization",
                [
                    f"conv{i}_out",
                    f"bn{i}.weight",
                    f"bn{i}.bias",
                    f"bn{i}.running_mean",
                    f"bn{i}.running_var",
                ],
                [f"bn{i}_out"],
                name=f"/bn{i}/BatchNormalization",
                epsilon=BN_EPSILON,
                momentum=1.0 - BN_MOMENTUM,
            ),
            helper.make_node("Relu", [f"bn{i}_out"], [f"relu{i}_out"], name=f"/relu{i}/Relu"),
        ]
        pool_input = f"relu{i}_out"
        if i == 2:
            nodes.append(
                helper.make_node("Identity", [pool_input], ["identity_out"], name="/Identity")
            )
            pool_input = "identity_out"
        nodes.append(
            helper.make_node(
                "MaxPool",
                [pool_input],
                [f"pool{i}_out"],
                name=f"/pool{i}/MaxPool",
                kernel_shape=[2, 2],
                strides=[2, 2],
            )
        )
        h = f"pool{i}_out"

    nodes += [
        helper.make_node("Shape", [h], ["flatten_shape"], name="/flatten/Shape"),
        const("flatten_index0", np.array(0, dtype=np.int64)),
        helper.make_node(
            "Gather",
            ["flatten_shape", "flatten_index0"],
            ["flatten_batch"],
            name="/flatten/Gather",
            axis=0,
        ),
        const("flatten_axes", np.array([0], dtype=np.int64)),
        helper.make_node(
            "Unsqueeze",
            ["flatten_batch", "flatten_axes"],
            ["flatten_batch_1d"],
            name="/flatten/Unsqueeze",
        ),
        const("flatten_minus1", np.array([-1], dtype=np.int64)),
        helper.make_node(
            "Concat",
            ["flatten_batch_1d", "flatten_minus1"],
            ["flatten_target_shape"],
            name="/flatten/Concat",
            axis=0,
        ),
        helper.make_node(
            "Reshape", [h, "flatten_target_shape"], ["flatten_out"], name="/flatten/Reshape"
        ),
        helper.make_node(
            "Dropout", ["flatten_out", "dropout.ratio"], ["dropout_out"], name="/dropout/Dropout"
        ),
        helper.make_node(
            "Gemm",
            ["dropout_out", "fc.weight", "fc.bias"],
            ["logits"],
            name="/fc/Gemm",
            alpha=1.0,
            beta=1.0,
            transB=1,
        ),
    ]

    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        outputs=[
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])
        ],
        initializer=initializers,
    )
    onnx_model = helper.make_model(
        graph,
        producer_name="mcc-tools",
        producer_version="1.0",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    onnx_model.ir_version = IR_VERSION
    onnx_model.doc_string = (
        "Small CNN trained on scikit-learn load_digits by tools/train_digits_cnn.py. "
        "Input: image [batch,1,8,8] float32 with pixel values x/16 (0..1)."
    )
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def float32_model(model: DigitsCNN) -> DigitsCNN:
    """A copy of ``model`` with every tensor rounded to float32, as exported."""
    copy = object.__new__(DigitsCNN)
    copy.params = {k: v.astype(np.float32) for k, v in model.params.items()}
    copy.buffers = {k: v.astype(np.float32) for k, v in model.buffers.items()}
    return copy


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` archive with fixed zip timestamps, so it is byte-reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, buffer.getvalue())


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main() -> None:
    """Train, export, verify with onnxruntime and write the example files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("examples"),
        help="output directory (default: examples)",
    )
    args = parser.parse_args()
    started = time.perf_counter()

    x_train, x_test, y_train, y_test = load_data()
    rng = np.random.default_rng(SEED)
    model = DigitsCNN(rng)
    print(f"train {len(x_train)}  test {len(x_test)}  parameters {model.parameter_count()}")
    train(model, x_train, y_train, rng)

    numpy_acc = (model.predict_logits(x_test).argmax(axis=1) == y_test).mean()
    print(f"numpy test accuracy (float64): {numpy_acc:.4f}")

    onnx_model = export_onnx(model)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out_dir / "digits_cnn.onnx"
    onnx_path.write_bytes(onnx_model.SerializeToString())

    x_test32 = x_test.astype(np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_logits = session.run(["logits"], {"image": x_test32})[0]
    ref_logits = float32_model(model).predict_logits(x_test32)
    max_diff = float(np.abs(ort_logits - ref_logits).max())
    ort_pred = ort_logits.argmax(axis=1)
    assert np.array_equal(ort_pred, ref_logits.argmax(axis=1)), "ORT and NumPy predictions differ"
    assert max_diff < 1e-3, f"ORT and NumPy logits differ by {max_diff}"
    correct = int((ort_pred == y_test).sum())
    ort_acc = correct / len(y_test)

    inputs_path = args.out_dir / "digits_cnn_inputs.npz"
    write_npz(inputs_path, image=x_test32[:1])

    print(f"onnxruntime vs numpy max |logit diff|: {max_diff:.2e}")
    print(f"onnxruntime test accuracy: {ort_acc:.4f} ({correct}/{len(y_test)})")
    print(f"parameter count: {model.parameter_count()}")
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes)")
    print(f"wrote {inputs_path} ({inputs_path.stat().st_size} bytes, label {y_test[0]})")
    print(f"elapsed: {time.perf_counter() - started:.1f} s")
    assert ort_acc >= MIN_ACCURACY, f"test accuracy {ort_acc:.4f} < {MIN_ACCURACY}"


if __name__ == "__main__":
    main()
