"""The two sample networks: seeded weights, fixed sample inputs and a pure-numpy reference.

Weights are stored in ONNX layout (Gemm `B` as `[in, out]`, Conv filters as `[O, I, kH, kW]`);
each format builder converts them to its own layout. The reference runs in float64 so that it
is independent of every runtime's kernels and serves as ground truth for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.tensors import TensorSpec

FloatArray = npt.NDArray[np.float32]
Weights = Mapping[str, FloatArray]

# Changing the seed changes every file's sha256, so it is part of the sample set's identity.
SEED = 20261129
SAMPLE_BATCH = 4


@dataclass(frozen=True, slots=True)
class SampleNetwork:
    """One sample network: its signature, weights, sample inputs and numpy reference."""

    name: str
    description: str
    input: TensorSpec
    output: TensorSpec
    weights: Weights
    sample_inputs: FloatArray
    forward: Callable[[Weights, FloatArray], FloatArray]
    # Largest |difference| from the reference that dynamic INT8 quantization is allowed; each
    # value was measured (see the networks below) and holds with margin at batch 4 and 1.
    int8_tolerance: float

    def reference(self, x: FloatArray) -> FloatArray:
        """Run the numpy reference implementation on `x`."""
        return self.forward(self.weights, x)


def sample_networks() -> tuple[SampleNetwork, ...]:
    """Build every sample network (deterministic: same seed, same bytes)."""
    return (_mlp(), _cnn())


def _rngs(stream: int) -> tuple[np.random.Generator, np.random.Generator]:
    # Separate streams per network and for weights vs inputs, so changing one leaves the
    # others' bytes (and checksums) untouched.
    return np.random.default_rng([SEED, stream, 0]), np.random.default_rng([SEED, stream, 1])


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> FloatArray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _mlp() -> SampleNetwork:
    weights_rng, inputs_rng = _rngs(1)
    # He scaling keeps the hidden activations O(1); the output layer is scaled so that the
    # logits spread over a few units: softmax is peaked but far from one-hot.
    weights = {
        "fc1.weight": _normal(weights_rng, (64, 128), np.sqrt(2 / 64)),
        "fc1.bias": _normal(weights_rng, (128,), 0.1),
        "fc2.weight": _normal(weights_rng, (128, 10), 1.2 * np.sqrt(1 / 128)),
        "fc2.bias": _normal(weights_rng, (10,), 0.1),
    }
    return SampleNetwork(
        name="mlp",
        description="MLP 64 -> 128 (ReLU) -> 10 with softmax: class probabilities",
        input=TensorSpec("input", "FP32", (-1, 64)),
        output=TensorSpec("probabilities", "FP32", (-1, 10)),
        weights=weights,
        sample_inputs=inputs_rng.standard_normal((SAMPLE_BATCH, 64)).astype(np.float32),
        forward=mlp_reference,
        # Measured: 6e-3 on the samples, 1.7e-2 worst over 512 random inputs.
        int8_tolerance=5e-2,
    )


def _cnn() -> SampleNetwork:
    weights_rng, inputs_rng = _rngs(2)
    conv = {
        "conv1.weight": _normal(weights_rng, (16, 3, 3, 3), np.sqrt(2 / 27)),
        "conv1.bias": _normal(weights_rng, (16,), 0.1),
        "conv2.weight": _normal(weights_rng, (32, 16, 3, 3), np.sqrt(2 / 144)),
        "conv2.bias": _normal(weights_rng, (32,), 0.1),
    }
    # Post-ReLU features are all positive, so a random head would give every image nearly the
    # same logits (one class always wins). Centre and scale the head on a calibration batch,
    # as a data-dependent init would: logits then vary per image by a few units.
    features = cnn_features(conv, _images(np.random.default_rng([SEED, 2, 2]), 64))
    mean = _rounded(features.mean(axis=0))
    spread = _rounded(features.std(axis=0).mean())[0]
    head = _normal(weights_rng, (32, 10), 1.5 / np.sqrt(32)) / spread
    # float64 then one rounding to float32, so BLAS summation order cannot show in the bytes.
    offset = mean.astype(np.float64) @ head.astype(np.float64)
    bias = _normal(weights_rng, (10,), 0.1) - offset.astype(np.float32)
    return SampleNetwork(
        name="cnn",
        description="CNN on 3x32x32 NCHW images: two 3x3 conv blocks, global pooling, 10 logits",
        input=TensorSpec("image", "FP32", (-1, 3, 32, 32)),
        output=TensorSpec("logits", "FP32", (-1, 10)),
        weights={**conv, "fc.weight": head, "fc.bias": bias},
        sample_inputs=_images(inputs_rng, SAMPLE_BATCH),
        forward=cnn_reference,
        # Measured: 0.19 on the samples (logits spread about 1.8), 0.31 worst over 512 images;
        # per-tensor activation quantization ahead of conv2 dominates the error.
        int8_tolerance=0.5,
    )


def _images(rng: np.random.Generator, count: int) -> FloatArray:
    # Blocky standardised images (8x8 patches plus noise): pure noise would average out in the
    # global pooling and make every image look alike to the network.
    patches = rng.standard_normal((count, 3, 4, 4))
    noise = rng.standard_normal((count, 3, 32, 32))
    return (np.kron(patches, np.ones((8, 8))) + 0.3 * noise).astype(np.float32)


def _rounded(values: npt.NDArray[np.float64] | np.float64) -> npt.NDArray[np.float32]:
    # Three significant digits, so that a float64 sum differing in its last bit on another
    # machine (another BLAS, another SIMD width) almost surely leaves the weights unchanged.
    return np.array([float(f"{v:.3g}") for v in np.ravel(values)], dtype=np.float32)


def mlp_reference(weights: Weights, x: FloatArray) -> FloatArray:
    """Numpy MLP: Gemm -> Relu -> Gemm -> Softmax over the last axis."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    hidden = np.maximum(x.astype(np.float64) @ w["fc1.weight"] + w["fc1.bias"], 0.0)
    logits = hidden @ w["fc2.weight"] + w["fc2.bias"]
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True), dtype=np.float32)


def cnn_reference(weights: Weights, x: FloatArray) -> FloatArray:
    """Numpy CNN in NCHW: the pooled features of `cnn_features`, then Gemm."""
    pooled = cnn_features(weights, x)
    head = weights["fc.weight"].astype(np.float64)
    return np.asarray(pooled @ head + weights["fc.bias"].astype(np.float64), dtype=np.float32)


def cnn_features(weights: Weights, x: FloatArray) -> npt.NDArray[np.float64]:
    """Numpy CNN trunk in NCHW: conv-relu-maxpool, conv-relu, global average pool."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    h = np.maximum(_conv3x3_same(x.astype(np.float64), w["conv1.weight"], w["conv1.bias"]), 0.0)
    n, c, height, width = h.shape
    h = h.reshape(n, c, height // 2, 2, width // 2, 2).max(axis=(3, 5))
    h = np.maximum(_conv3x3_same(h, w["conv2.weight"], w["conv2.bias"]), 0.0)
    return np.asarray(h.mean(axis=(2, 3)), dtype=np.float64)


def _conv3x3_same(
    x: npt.NDArray[np.float64], kernel: npt.NDArray[np.float64], bias: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    # Cross-correlation (what ONNX Conv and TFLite CONV_2D compute) with one pixel of zero padding.
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    out = np.einsum("nchwij,ocij->nohw", windows, kernel)
    return np.asarray(out + bias[None, :, None, None], dtype=np.float64)
