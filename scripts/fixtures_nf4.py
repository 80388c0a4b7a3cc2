"""bitsandbytes 4-bit quantization fixtures for alignkit's `model::quant` (issue 36, QLoRA).

With bitsandbytes (0.50.2) on the CPU and torch on one thread, records in
model/tests/fixtures/nf4/:
  cases.safetensors
    <matrix>.weight          f32 [rows, cols], the inputs (normal values, outliers,
                             an all-zero block, a block of exact midpoint ties)
    <case>.packed            uint8 [n/2, 1]  quantize_4bit's packed codes
    <case>.absmax            f32             quant_state.absmax (no double quantization)
    <case>.absmax_codes      uint8           quant_state.absmax       (double quantization)
    <case>.absmax2           f32             quant_state.state2.absmax
    <case>.offset            f32 [1]         quant_state.offset
    <case>.dequantized       f32 [rows, cols] dequantize_4bit(packed, quant_state)
    dynamic_map              f32 [256]       quant_state.state2.code (create_dynamic_map())
    blockwise.<i>.input / .codes / .absmax / .dequantized
                             quantize_blockwise(x, blocksize=256) and back, on its own
    mean.<i>.input / .mean   torch.mean of f32 vectors (the double-quantization offset)
  cases.json                 the parameters of each case

The Rust test model/tests/nf4.rs requires alignkit to match every tensor bit for bit.
Run from the repo root:  python scripts/fixtures_nf4.py
CI never runs this; the outputs are committed.
"""
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

import bitsandbytes
import bitsandbytes.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "model", "tests", "fixtures", "nf4")
NF4_MIDPOINTS = (F.get_4bit_type("nf4", "cpu")[:-1] + F.get_4bit_type("nf4", "cpu")[1:]) / 2


def matrix_a():
    """[8, 128]: N(0, 0.02) with outliers, a zero block, and blocks of exact ties."""
    g = torch.Generator().manual_seed(36)
    w = torch.randn(8, 128, generator=g) * 0.02
    w[0, 5] = 0.5
    w[3, 70] = -0.7
    w[2, :64] = 0.0
    # Absmax 1: every NF4 and FP4 midpoint scales to itself, so it sits exactly on a bound.
    ties = [1.0] + NF4_MIDPOINTS.tolist()
    fp4 = sorted(F.get_4bit_type("fp4", "cpu").tolist())
    ties += [(a + b) / 2 for a, b in zip(fp4[:-1], fp4[1:])]
    ties += [0.0, -0.0, 1e-3, -1e-3, 0.0026, -0.0026, 0.002604, -1.0, 0.999]
    w[5, :len(ties)] = torch.tensor(ties)
    w[5, len(ties):64] = 0.25
    # Absmax 2: the reciprocal is exact, so 2 x midpoint ties again.
    w[6, 64:128] = 2 * w[5, :64]
    return w


def reciprocal_splits(absmax, bounds):
    """Values w for which w * (1 / absmax) and w / absmax fall on opposite sides of a bound."""
    a = np.float32(absmax)
    r = np.float32(1) / a
    found = []
    for m in bounds.numpy():
        centre = np.float32(m * a).view(np.int32)
        for k in range(-40, 41):
            w = np.int32(centre + k).view(np.float32)
            if (np.float32(w * r) <= m) != (np.float32(w / a) <= m):
                found.append(float(w))
                break
    return found


def matrix_b():
    """[3, 256]: N(0, 1) with outliers, one tiny block, and a block (absmax 3) where
    multiplying by the f32 reciprocal and dividing by absmax pick different NF4 codes."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(3, 256, generator=g)
    w[1, 17] = 12.0
    w[2, 200] = -9.5
    w[0, 128:192] *= 1e-6
    nf4 = F.get_4bit_type("nf4", "cpu")
    splits = reciprocal_splits(3.0, (nf4[:-1] + nf4[1:]) / 2)
    assert len(splits) >= 4, splits
    w[2, :64] = w[2, :64].clamp(-2.9, 2.9)
    w[2, 0] = 3.0
    w[2, 1:1 + len(splits)] = torch.tensor(splits)
    return w


CASES = [
    # (case, matrix, quant_type, blocksize, double)
    ("a_nf4", "a", "nf4", 64, False),
    ("a_nf4_dq", "a", "nf4", 64, True),
    ("a_fp4", "a", "fp4", 64, False),
    ("a_fp4_dq", "a", "fp4", 64, True),
    ("b_nf4", "b", "nf4", 64, False),
    ("b_nf4_dq", "b", "nf4", 64, True),
    ("b_fp4_dq", "b", "fp4", 64, True),
    ("b_nf4_128", "b", "nf4", 128, False),
    ("b_nf4_128_dq", "b", "nf4", 128, True),
]
BLOCKWISE_LENGTHS = [700, 2600]
MEAN_LENGTHS = [1, 7, 16, 33, 255, 1024, 1500, 4099, 20000]


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    matrices = {"a": matrix_a(), "b": matrix_b()}
    tensors = {f"{name}.weight": w for name, w in matrices.items()}
    meta = {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cases": []}
    dynamic_map = None
    for case, matrix, quant_type, blocksize, double in CASES:
        w = matrices[matrix]
        packed, state = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=double,
                                        quant_type=quant_type)
        assert packed.dtype == torch.uint8 and tuple(packed.shape) == (w.numel() // 2, 1)
        tensors[f"{case}.packed"] = packed
        if double:
            tensors[f"{case}.absmax_codes"] = state.absmax
            tensors[f"{case}.absmax2"] = state.state2.absmax
            tensors[f"{case}.offset"] = state.offset.reshape(1)
            assert state.state2.blocksize == 256
            dynamic_map = state.state2.code
        else:
            tensors[f"{case}.absmax"] = state.absmax
        tensors[f"{case}.dequantized"] = F.dequantize_4bit(packed, state)
        meta["cases"].append({"name": case, "matrix": matrix, "shape": list(w.shape),
                              "quant_type": quant_type, "blocksize": blocksize,
                              "double": double})
    tensors["dynamic_map"] = dynamic_map

    rng = np.random.default_rng(36)
    for i, n in enumerate(BLOCKWISE_LENGTHS):
        x = torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 0.01)
        x[3] = 0.3
        codes, state = F.quantize_blockwise(x, blocksize=256)
        tensors[f"blockwise.{i}.input"] = x
        tensors[f"blockwise.{i}.codes"] = codes
        tensors[f"blockwise.{i}.absmax"] = state.absmax
        tensors[f"blockwise.{i}.dequantized"] = F.dequantize_blockwise(codes, state)
    meta["blockwise_lengths"] = BLOCKWISE_LENGTHS

    for i, n in enumerate(MEAN_LENGTHS):
        x = torch.from_numpy(rng.random(n).astype(np.float32) * 0.1 + 0.01)
        tensors[f"mean.{i}.input"] = x
        tensors[f"mean.{i}.mean"] = x.mean().reshape(1)
    meta["mean_lengths"] = MEAN_LENGTHS

    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(OUT, "cases.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    size = os.path.getsize(os.path.join(OUT, "cases.safetensors"))
    print(f"{len(CASES)} cases, {size} bytes")


if __name__ == "__main__":
    main()
