"""Rotary position embeddings: the angle of every (position, frequency), from the config.

Backends receive cos/sin tables (context, head_dim / 2) and know nothing of theta or of
context-extension schemes, so the frequencies are computed here, once:
freq_i = theta^(-2i / head_dim), then divided by a per-frequency factor: the file's own
(GGUF `rope_freqs.weight`, Llama 3.1+), Llama 3's scaling formula, or a linear factor.
Plain float32 arithmetic like llama2.c's run.c, so greedy tokens match it exactly.
"""
from __future__ import annotations

import math

import numpy as np

from .config import ModelConfig


def frequencies(config: ModelConfig, freq_factors: np.ndarray | None = None) -> np.ndarray:
    """float32 (head_dim // 2,) angular frequencies per position."""
    hd = config.head_dim
    i = np.arange(0, hd, 2, dtype=np.float32)
    freq = (np.float32(1.0) / np.power(np.float32(config.rope_theta), i / np.float32(hd))).astype(np.float32)
    rs = config.rope_scaling
    if freq_factors is not None:
        freq = (freq / np.asarray(freq_factors, dtype=np.float32)).astype(np.float32)
    elif rs.kind == "linear":
        freq = (freq / np.float32(rs.factor)).astype(np.float32)
    elif rs.kind == "llama3":
        low_wavelen = rs.original_context / rs.low_freq_factor
        high_wavelen = rs.original_context / rs.high_freq_factor
        out = []
        for f in freq.astype(np.float64):
            wavelen = 2 * math.pi / f
            if wavelen < high_wavelen:
                out.append(f)
            elif wavelen > low_wavelen:
                out.append(f / rs.factor)
            else:
                smooth = (rs.original_context / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
                out.append((1 - smooth) * f / rs.factor + smooth * f)
        freq = np.asarray(out, dtype=np.float32)
    return freq


def rope_tables(config: ModelConfig, context: int, freq_factors: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position * frequency, float32 (context, head_dim // 2)."""
    freq = frequencies(config, freq_factors)
    ang = (np.arange(context, dtype=np.float32)[:, None] * freq[None, :]).astype(np.float32)
    return (np.cos(ang.astype(np.float64)).astype(np.float32),
            np.sin(ang.astype(np.float64)).astype(np.float32))
