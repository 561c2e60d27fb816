"""CUDA backend vs the CPU backend and an independent numpy forward (needs a GPU).

Every test is marked `gpu` and the module skips cleanly where cuda-python, NVRTC, the
driver or a device is missing.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from inference.config import SHAPES, ModelConfig
from inference.errors import BackendError
from kernels.cuda_driver import CudaError
from inference.weights import ModelWeights, QTensor, random_weights

pytestmark = pytest.mark.gpu


def _gpu_or_skip() -> None:
    try:
        from kernels import cuda_compile, cuda_driver
        cuda_driver.init()
        cuda_compile.nvrtc_version()
    except (BackendError, ImportError, CudaError) as e:
        pytest.skip(f"no usable CUDA GPU: {e}")


@pytest.fixture(scope="module", autouse=True)
def _need_gpu():
    _gpu_or_skip()


# ------------------------------------------------------------------ numpy reference
def _f64(t) -> np.ndarray:
    return (t.dequantize() if isinstance(t, QTensor) else np.asarray(t)).astype(np.float64)


def reference_logits(w: ModelWeights, tokens: list[int]) -> np.ndarray:
    """llama2.c's forward in float64 numpy, logits of every position (T, vocab)."""
    c = w.config
    hd, kvm = c.head_dim, c.kv_mul
    T = len(tokens)

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + c.norm_eps) * g

    i = np.arange(0, hd, 2)
    freq = 1.0 / c.rope_theta ** (i / hd)
    ang = np.arange(T)[:, None] * freq[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(v, nh):
        v = v.reshape(T, nh, hd // 2, 2)
        a, b = v[..., 0], v[..., 1]
        ca, sa = cos[:, None, :], sin[:, None, :]
        return np.stack([a * ca - b * sa, a * sa + b * ca], axis=-1).reshape(T, nh * hd)

    x = _f64(w.tok_embeddings)[tokens]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(c.n_layers):
        xb = rms(x, w.attn_norm[l].astype(np.float64))
        q = rope(xb @ _f64(w.wq[l]).T, c.n_heads)
        k = rope(xb @ _f64(w.wk[l]).T, c.n_kv_heads)
        v = xb @ _f64(w.wv[l]).T
        att = np.zeros((T, c.dim))
        for h in range(c.n_heads):
            g = h // kvm
            qh, kh, vh = q[:, h * hd:(h + 1) * hd], k[:, g * hd:(g + 1) * hd], v[:, g * hd:(g + 1) * hd]
            s = qh @ kh.T / np.sqrt(hd) + mask
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            att[:, h * hd:(h + 1) * hd] = p @ vh
        x = x + att @ _f64(w.wo[l]).T
        xb = rms(x, w.ffn_norm[l].astype(np.float64))
        a, b = xb @ _f64(w.w1[l]).T, xb @ _f64(w.w3[l]).T
        x = x + (a / (1 + np.exp(-a)) * b) @ _f64(w.w2[l]).T
    x = rms(x, w.final_norm.astype(np.float64))
    return x @ _f64(w.output).T


# ------------------------------------------------------------------ helpers
def _cuda(weights: ModelWeights, quant: str, **kw):
    from inference.backends.cuda import CudaBackend
    return CudaBackend(weights, quant=quant, **kw)


def _prepared(weights: ModelWeights, quant: str) -> ModelWeights:
    from app.commands.validate import prepare_weights
    return prepare_weights(weights, quant)


def _tol(logits: np.ndarray, quant: str) -> float:
    return (1e-3 if quant == "fp32" else 4e-3) * max(1.0, float(np.abs(logits).max()))


SEQ = [1, 5, 9, 2, 7, 3, 11, 4, 8, 6, 10, 12]

RANDOM_SHAPES = {
    # name: (dim, hidden, layers, heads, kv_heads, vocab, seq, shared)
    "gqa_shared_oddhidden": (64, 172, 2, 8, 4, 512, 64, True),
    "mha_separate": (128, 384, 2, 4, 4, 300, 64, False),
    "gqa4_separate": (256, 512, 2, 8, 2, 1000, 96, False),
    "mqa_shared": (96, 256, 3, 3, 1, 257, 48, True),
}


def _random(name: str, seed: int = 0) -> ModelWeights:
    d, h, L, nh, nkv, v, s, shared = RANDOM_SHAPES[name]
    cfg = ModelConfig(dim=d, hidden_dim=h, n_layers=L, n_heads=nh, n_kv_heads=nkv, vocab_size=v,
                      seq_len=s, shared_classifier=shared)
    return random_weights(cfg, seed=seed, scale=0.1)


def _stepwise(backend, tokens: list[int], prefill: int) -> list[np.ndarray]:
    """Logits after a prefill of `prefill` tokens, then after each single-token step."""
    backend.forward(tokens[:prefill], 0)
    out = [backend.logits()]
    for p in range(prefill, len(tokens)):
        backend.forward(tokens[p:p + 1], p)
        out.append(backend.logits())
    return out


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("quant", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("shape", sorted(RANDOM_SHAPES))
def test_random_shapes_match_cpu(shape: str, quant: str) -> None:
    from inference.backends.cpu import CpuBackend
    w = _prepared(_random(shape), quant)
    cpu, gpu = CpuBackend(w), _cuda(w, quant)
    try:
        for a, b in zip(_stepwise(cpu, SEQ, 5), _stepwise(gpu, SEQ, 5)):
            assert np.all(np.isfinite(b))
            assert np.max(np.abs(a - b)) <= _tol(a, quant)
        assert gpu.argmax() == int(np.argmax(gpu.logits()))
    finally:
        gpu.close()


@pytest.mark.parametrize("shape", sorted(RANDOM_SHAPES))
def test_random_shapes_match_numpy_reference(shape: str) -> None:
    w = _random(shape, seed=1)
    ref = reference_logits(w, SEQ)
    gpu = _cuda(w, "fp32")
    try:
        got = _stepwise(gpu, SEQ, 4)
        for i, b in enumerate(got):
            a = ref[3 + i]
            assert np.max(np.abs(a - b)) <= _tol(a, "fp32"), f"position {3 + i}"
    finally:
        gpu.close()


@pytest.mark.parametrize("quant", ["fp32", "int8"])
def test_default_model_matches_cpu(default_model, quant: str) -> None:
    from inference.backends.cpu import CpuBackend
    w = _prepared(default_model.weights, quant)
    ids = default_model.tokenizer.encode("Once upon a time, there was a", bos=True)
    cpu, gpu = CpuBackend(w), _cuda(w, quant)
    try:
        seq = list(ids)
        cpu.forward(seq, 0)
        gpu.forward(seq, 0)
        for _ in range(24):
            a, b = cpu.logits(), gpu.logits()
            assert np.max(np.abs(a - b)) <= _tol(a, quant)
            assert gpu.argmax() == int(np.argmax(a))
            seq.append(int(np.argmax(a)))
            cpu.forward(seq[-1:], len(seq) - 1)
            gpu.forward(seq[-1:], len(seq) - 1)
    finally:
        gpu.close()


def test_default_model_matches_numpy_reference(default_model) -> None:
    w = default_model.weights
    ids = default_model.tokenizer.encode("Once upon a time", bos=True)
    seq = ids + [10, 20, 30, 40]
    ref = reference_logits(w, seq)
    gpu = _cuda(w, "fp32")
    try:
        got = _stepwise(gpu, seq, len(ids))
        for i, b in enumerate(got):
            a = ref[len(ids) - 1 + i]
            assert np.max(np.abs(a - b)) <= _tol(a, "fp32")
    finally:
        gpu.close()


def test_prefill_chunks_equal_token_by_token() -> None:
    w = _random("gqa4_separate", seed=3)
    a, b = _cuda(w, "fp16", max_batch=4), _cuda(w, "fp16")
    try:
        a.forward(SEQ, 0)           # 3 chunks of <= 4 tokens
        la = a.logits()
        for p, t in enumerate(SEQ):  # one graph replay per token
            b.forward([t], p)
        lb = b.logits()
        assert np.max(np.abs(la - lb)) <= _tol(la, "fp16")
        # rolling back: re-running a suffix overwrites the cache
        a.forward(SEQ[6:], 6)
        assert np.max(np.abs(a.logits() - la)) <= _tol(la, "fp16")
    finally:
        a.close()
        b.close()


def test_topk_and_argmax_on_device() -> None:
    w = _random("mha_separate", seed=4)
    gpu = _cuda(w, "fp32")
    try:
        gpu.forward(SEQ[:6], 0)
        lg = gpu.logits()
        for k in (1, 5, 40, 300):
            ids, vals = gpu.topk(k)
            want = np.argsort(-lg, kind="stable")[:k]
            assert list(ids) == list(want)
            assert np.allclose(vals, lg[want])
        assert gpu.argmax() == int(np.argmax(lg))
    finally:
        gpu.close()


@pytest.mark.parametrize("quant", ["fp32", "int8"])
def test_layer_split_across_two_shards_matches_one(quant: str) -> None:
    w = _prepared(_random("gqa_shared_oddhidden", seed=5), quant)
    one = _cuda(w, quant)
    two = _cuda(w, quant, gpu_mem=[1.0, 1.0], devices=[0, 0])
    try:
        assert "split 1/1" in two.describe()
        for a, b in zip(_stepwise(one, SEQ, 6), _stepwise(two, SEQ, 6)):
            assert np.max(np.abs(a - b)) <= 1e-5 * max(1.0, float(np.abs(a).max()))
    finally:
        one.close()
        two.close()


def test_bad_input_is_a_backend_error() -> None:
    w = _random("mqa_shared")
    gpu = _cuda(w, "fp32")
    try:
        with pytest.raises(BackendError):
            gpu.forward([w.config.vocab_size], 0)
        with pytest.raises(BackendError):
            gpu.forward([1, 2], w.config.seq_len - 1)
        with pytest.raises(BackendError):
            gpu.forward([], 0)
        m = gpu.memory()
        assert m.device_total and m.device_used and m.weight_bytes > 0 and m.kv_cache_bytes > 0
    finally:
        gpu.close()
    with pytest.raises(BackendError):
        gpu.forward([1], 0)
    with pytest.raises(BackendError):
        _cuda(w, "int4")


def test_out_of_memory_is_one_line() -> None:
    big = replace(SHAPES["llama2-13b"], seq_len=4096 * 64)
    from inference.backends.cuda import CudaBackend
    with pytest.raises(BackendError) as e:
        CudaBackend.random(big, "fp32")
    msg = str(e.value)
    assert "\n" not in msg and "GiB" in msg and "--device cpu" in msg


@pytest.mark.parametrize("quant", ["int8", "fp16"])
def test_random_on_device_weights_run(quant: str) -> None:
    from inference.backends.cuda import CudaBackend
    gpu = CudaBackend.random(SHAPES["stories15M"], quant, seed=1)
    try:
        gpu.forward([1, 2, 3], 0)
        gpu.forward([4], 3)
        lg = gpu.logits()
        assert np.all(np.isfinite(lg)) and np.std(lg) > 0
        assert 0 <= gpu.argmax() < lg.size
        gpu.synchronize()
        assert gpu.weight_bytes_per_token() > 0
    finally:
        gpu.close()


def test_speculative_step_is_confirmed_or_overwritten() -> None:
    w = _random("gqa4_separate", seed=6)
    a, b = _cuda(w, "fp32", speculate=True), _cuda(w, "fp32", speculate=False)
    close = lambda x, y: np.max(np.abs(x - y)) <= 1e-5 * max(1.0, float(np.abs(x).max()))  # noqa: E731
    try:
        for be in (a, b):
            be.forward(SEQ[:5], 0)
        t = a.argmax()                       # a starts step 5 with t at once
        assert t == b.argmax() == a.argmax()
        assert close(a.logits(), b.logits())  # still step 4's logits
        assert list(a.topk(5)[0]) == list(b.topk(5)[0])
        other = (t + 1) % w.config.vocab_size
        for be in (a, b):                    # a's speculation misses: step 5 is redone
            be.forward([other], 5)
        assert close(a.logits(), b.logits())
        t2 = a.argmax()
        assert t2 == b.argmax()
        for be in (a, b):                    # a's speculation hits
            be.forward([t2], 6)
        assert close(a.logits(), b.logits())
        for be in (a, b):                    # rollback to an earlier position
            be.forward(SEQ[2:4], 2)
        assert close(a.logits(), b.logits())
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ GGUF block types
BLOCK_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "iq4_nl")
LONG = SEQ + [13, 14, 15, 16, 17, 18, 19, 20, 21]


def _block_cfg(**kw) -> ModelConfig:
    base = dict(dim=512, hidden_dim=1024, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=700, seq_len=64,
                shared_classifier=False)
    base.update(kw)
    return ModelConfig(**base)


def _agree_cpu(w: ModelWeights, prefill: int, tokens=LONG, rtol: float = 1e-4, **kw) -> None:
    """CPU and CUDA on the same weights: every step's logits within rtol x max(1, max|logit|),
    the device's greedy token equal to the CPU's."""
    from inference.backends.cpu import CpuBackend
    cpu, gpu = CpuBackend(w), _cuda(w, None, **kw)
    try:
        for step, (a, b) in enumerate(zip(_stepwise(cpu, tokens, prefill), _stepwise(gpu, tokens, prefill))):
            assert np.all(np.isfinite(b))
            assert np.max(np.abs(a - b)) <= rtol * max(1.0, float(np.abs(a).max())), f"step {step}"
            assert gpu.argmax() == int(np.argmax(a)), f"step {step}"
    finally:
        gpu.close()


@pytest.mark.parametrize("wtype", BLOCK_TYPES)
@pytest.mark.parametrize("shared", [False, True])
def test_block_types_match_cpu(wtype: str, shared: bool) -> None:
    w = random_weights(_block_cfg(shared_classifier=shared), seed=7, scale=0.05, wtype=wtype)
    _agree_cpu(w, prefill=11)          # a token tile of 8 and a partial one of 3, then decode


def test_block_types_on_small_rows_fall_back_and_match_cpu() -> None:
    """SmolLM2-like widths (576): the K-quants' fallbacks (q5_0, q5_1, q8_0) on real rows."""
    for wtype in ("q4_k", "q5_k", "q6_k"):
        w = random_weights(_block_cfg(dim=576, hidden_dim=1536, n_heads=9, n_kv_heads=3), seed=8, scale=0.05,
                           wtype=wtype)
        _agree_cpu(w, prefill=5)


#: A Q4_K_M-like mix over 3 layers: a storage type per (tensor, layer), q/k/v of several
#: storages in one launch, w1 and w3 apart, float parts beside block parts.
MIXED_PLAN = {("tok_embeddings", None): "q4_k", ("output", None): "q6_k",
              ("wq", 0): "q4_k", ("wk", 0): "q4_k", ("wv", 0): "q6_k", ("wo", 0): "q4_k",
              ("w1", 0): "q4_k", ("w3", 0): "q4_k", ("w2", 0): "q6_k",
              ("wq", 1): "q5_0", ("wk", 1): "q8_0", ("wv", 1): "fp16", ("wo", 1): "q5_1",
              ("w1", 1): "q4_k", ("w3", 1): "q5_k", ("w2", 1): "q4_1",
              ("wq", 2): "fp32", ("wk", 2): "iq4_nl", ("wv", 2): "q8_0", ("wo", 2): "fp16",
              ("w1", 2): "fp32", ("w3", 2): "fp32", ("w2", 2): "q4_0"}


def test_mixed_types_per_layer_match_cpu() -> None:
    """A Q4_K_M-like mix: q/k in Q4_K with v in Q6_K (one launch of two parts), w1/w3
    of different storage (the gated epilogue), float and int8 parts beside block parts."""
    from inference.quantize import quantize_q8
    cfg = _block_cfg(n_layers=3)
    plan = MIXED_PLAN
    pools = {t: random_weights(cfg, seed=len(t), scale=0.05, wtype=t) for t in set(plan.values())}
    w = ModelWeights(cfg, dict(random_weights(cfg, seed=3, scale=0.05).tensors))
    for key, t in plan.items():
        w.tensors[key] = pools[t].tensors[key]
    w.tensors[("wo", 2)] = quantize_q8(np.asarray(w.tensors[("wo", 2)], np.float32), 32)
    _agree_cpu(w, prefill=9)


@pytest.mark.parametrize("variant", ["neox_bias", "head_dim", "llama3_scaling", "rope_freqs"])
def test_architecture_variants_match_cpu(variant: str) -> None:
    from inference.config import RopeScaling
    kw = {"neox_bias": dict(arch="qwen2", rope_style="neox", qkv_bias=True),
          "head_dim": dict(head_dim=96, rope_style="neox"),
          "llama3_scaling": dict(rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 16)),
          "rope_freqs": dict(rope_freqs=True)}[variant]
    for wtype in ("fp32", "q6_k"):
        w = random_weights(_block_cfg(rope_theta=500.0, **kw), seed=9, scale=0.05, wtype=wtype)
        _agree_cpu(w, prefill=10, tokens=LONG + list(range(30, 60)))


def test_forward_batch_matches_cpu_and_solo_runs() -> None:
    """Several sequences (own slot, own position) in one pass through the token-tile
    kernels: the CPU's forward_batch logits, and each sequence's logits when run alone."""
    from inference.backends.cpu import CpuBackend
    w = random_weights(_block_cfg(), seed=21, scale=0.05, wtype="q4_k")
    prompts = [[1, 5, 9, 2], [3, 3, 7], [8, 1, 2, 6, 4, 9, 11, 12, 13, 14], [10], [4, 4]]
    n = len(prompts)
    cpu, gpu = CpuBackend(w, slots=n), _cuda(w, None, slots=n, max_batch=4)
    try:
        for s, p in enumerate(prompts):
            if len(p) > 1:
                cpu.forward(p[:-1], 0, slot=s)
                gpu.forward(p[:-1], 0, slot=s)
        toks, pos = [p[-1] for p in prompts], [len(p) - 1 for p in prompts]
        first = None
        for step in range(3):
            a = cpu.forward_batch(toks, pos, list(range(n)))
            b = gpu.forward_batch(toks, pos, list(range(n)))
            first = b if first is None else first
            for i in range(n):
                assert np.max(np.abs(a[i] - b[i])) <= 1e-4 * max(1.0, float(np.abs(a[i]).max())), (step, i)
            assert gpu.argmax() == int(np.argmax(b[-1]))
            toks, pos = [int(np.argmax(r)) for r in a], [q + 1 for q in pos]
    finally:
        gpu.close()
    for i, p in enumerate(prompts):    # alone: the same logits (only the tile shape differs)
        solo = _cuda(w, None)
        try:
            solo.forward(p, 0)
            ref = solo.logits()
            assert np.max(np.abs(ref - first[i])) <= 1e-4 * max(1.0, float(np.abs(ref).max())), i
        finally:
            solo.close()


@pytest.mark.parametrize("wtype", BLOCK_TYPES)
def test_random_block_weights_on_device(wtype: str) -> None:
    from inference.backends.cuda import CudaBackend
    gpu = CudaBackend.random(SHAPES["tinyllama-1.1b"].with_(n_layers=2), wtype, seed=1)
    try:
        gpu.forward([1, 2, 3], 0)
        gpu.forward([4], 3)
        lg = gpu.logits()
        assert np.all(np.isfinite(lg)) and np.std(lg) > 0 and gpu.weight_type == wtype
    finally:
        gpu.close()


def test_gguf_file_with_mixed_blocks_matches_cpu(tmp_path) -> None:
    """A Q4_K_M-like GGUF file through the real loader (block tensors as views of the map)."""
    from inference.formats import open_source

    from .test_cuda_emulated import write_mixed_gguf
    cfg = _block_cfg(n_layers=3)
    plan = {("tok_embeddings", None): "q4_k", ("output", None): "q6_k"}
    for l in range(cfg.n_layers):
        plan.update({("wq", l): "q4_k", ("wk", l): "q4_k", ("wv", l): "q6_k" if l != 1 else "q5_0",
                     ("wo", l): "q4_k", ("w1", l): "q4_k", ("w3", l): "q4_k", ("w2", l): "q6_k" if l != 1 else "q4_k"})
    path = str(tmp_path / "mixed.gguf")
    write_mixed_gguf(path, cfg, plan)
    _agree_cpu(open_source(path).weights(), prefill=9)
