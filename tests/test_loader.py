"""load_model: int8 for Meta/HF/GGUF sources goes through the on-disk cache."""
from __future__ import annotations

import os

import numpy as np
import pytest

from inference.backends.cpu import CpuBackend
from inference.loader import load_model
from inference.quantize import cached_int8, quantize_weights

from .conftest import DATA

CONVERTED = os.path.join(DATA, "stories260K-converted")


@pytest.mark.parametrize("name", ["hf", "meta2"])
def test_int8_from_other_formats_is_cached_and_matches(name, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = os.path.join(CONVERTED, name)
    fp32 = load_model(path, quant="none")
    assert cached_int8(path, fp32.config) is None
    calls: list[tuple[int, int]] = []
    first = load_model(path, quant="int8", progress=lambda d, t: calls.append((d, t)))
    assert first.weights.weight_type == "int8" and calls and calls[-1][0] == calls[-1][1]
    files = os.listdir(tmp_path / "llama-chat" / "quant")
    assert len(files) == 1
    mtime = os.path.getmtime(tmp_path / "llama-chat" / "quant" / files[0])
    calls.clear()
    second = load_model(path, quant="int8", progress=lambda d, t: calls.append((d, t)))
    assert calls == []  # warm: mapped, not quantized again
    assert os.path.getmtime(tmp_path / "llama-chat" / "quant" / files[0]) == mtime
    # the same numbers as quantizing the fp32 load in memory
    ref = quantize_weights(fp32.weights, 64)
    ids = [1, 403, 407, 261, 378]
    outs = []
    for w in (ref, first.weights, second.weights):
        b = CpuBackend(w)
        b.forward(ids, 0)
        outs.append(b.logits())
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    assert second.tokenizer.encode("Once upon a time") == ids
