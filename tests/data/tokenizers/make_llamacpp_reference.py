"""NOT A TEST. Writes llamacpp_reference.json: llama.cpp's token ids for the texts below,
computed once and committed; tests/test_tokenizer_gguf.py compares ours with them.

    /work/main/.venv/bin/python tests/data/tokenizers/make_llamacpp_reference.py \
        [--llama-python /tmp/llvenv/bin/python]

It needs `gguf` (gguf-py, to write vocab-only GGUF files) here and llama-cpp-python in the
other interpreter; llama.cpp runs in a subprocess, never inside the project. Vocabularies:

* smollm2: ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf itself (byte-level BPE, `smollm`);
* pre-<name>: the same vocabulary and merges with `tokenizer.ggml.pre` = <name>, so each
  pre-tokenizer's regular expressions are checked against llama.cpp's on the same texts;
* spm32k: tests/data/tokenizer.model (the 32000-piece LLaMA vocabulary) written as a
  `llama`-type GGUF vocabulary the way llama.cpp's converter does;
* stories260K: tests/data/stories260K-converted/stories260K.gguf (512 pieces).

For every text: ids without and (for texts that spell control tokens) with special-token
parsing, never with BOS; plus each vocabulary's BOS/EOS/add_bos, its end-of-generation
ids and a digest of every token's piece (llama.cpp's token_to_piece, special=False).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, ROOT)

from tests.tokenizer_fixtures import (REFERENCE, SMOLLM2, STORIES_GGUF, sentencepiece_gguf_metadata,  # noqa: E402
                                      with_pre)

PRE_VARIANTS = ("llama-bpe", "qwen2", "gpt-2", "default", "falcon", "dbrx", "deepseek-coder",
                "deepseek-v3", "poro-chat", "viking")

CORPUS = [
    "Hello world",
    "It's 3:45pm and I've got 12 apples. They're mine; you'll see, we'd agree. DON'T SHOUT, I'LL go.",
    "  two leading spaces\nnew line\ttab",
    "Ünïcode — naïve café, résumé, Zoë, façade; Straße, smørrebrød, Ångström, İstanbul, ǅemal.",
    "Combining: e\u0301 a\u0308 o\u0302\u0323 (NFD) vs é ä ộ (NFC); Hangul jamo \u1100\u1161\u11a8.",
    "日本語のテキストも正しく分割されるべきです。中文也一样：你好，世界！한국어 문장도 있습니다.",
    "Русский текст: съешь же ещё этих мягких французских булок. Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα.",
    "עברית: שלום עולם. العربية: مرحبا بالعالم ١٢٣. हिन्दी: नमस्ते दुनिया ४५६. ไทย: สวัสดีชาวโลก",
    "Emoji: 😀🙈🚀 👩‍👩‍👧‍👦 🇺🇸🇯🇵 👍🏽✌🏿 ❤️‍🔥 — ZWJ sequences, flags, skin tones, VS16.",
    "Math: ∑ᵢ xᵢ² ≤ ∞, ≠, ≈, √2, ∫₀¹ f(x) dx, ½ ¼ ⅞, Ⅻ, ①②③, x⁽ⁿ⁾.",
    "Numbers 0 00 007 3.14159265358979 -1e10 0x1F 1_000_000 12345678901234567890 1,234,567.89 ٣٤٥ ५६७",
    "Long number: 31415926535897932384626433832795028841971693993751058209749445923078164062862",
    "def fibonacci(n: int) -> int:\n\tif n < 2:\n\t\treturn n\n\treturn fibonacci(n - 1) + fibonacci(n - 2)  # naive\n",
    "for (int i = 0; i < n; ++i) {\n    sum += a[i] * b[i];   // dot\n}\nprintf(\"%d\\n\", sum);",
    '{"json": [1, 2.5e-3, null, true], "nested": {"k": "v\\u00e9"}, "empty": ""}',
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>  <!-- comment -->",
    "x = [i**2 for i in range(10)]",
    "    four spaces    then     five, tabs\t\tand\ttext, trailing   ",
    "Mixed    runs      of spaces\n\n\nand newlines\r\nwindows line endings\r\n\r\n\tindented",
    " \n \n\n  \t \u00a0 \u3000 \u2003 \u200b \ufeff end",
    "URLs like https://example.com/path?q=1&x=2#frag and emails a.b@c.org, paths C:\\Users\\me",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D don't won't y'all ma'am o'clock rock'n'roll",
    "!!! ??? ... --- ___ === +++ *** ### $$$ %%% ^^^ &&& ~~~ ``` ||| \\\\\\ /// <<< >>>",
    "<|im_end|> typed by a user is plain text",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|im_start|><|im_end|><repo_name><reponame><file_sep><filename><gh_stars>",
    "half tokens: <|im_ <|im_end| |im_end|> <<|im_end|>> <|im_start|<|im_end|>|>",
    "<s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] More [/INST]",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<unk> <s> </s> <0x0A> <0x41> ▁ ▁▁ a▁b",
    "Control chars: \x00\x01\x02\x07\x08\x0b\x0c\x0e\x1b\x1c\x1d\x1e\x1f\x7f \x85 end",
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine.",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX. tHe QuIcK bRoWn FoX.",
    "Private use \ue000\uf8ff, unassigned \u0378\U000e0080, supplementary 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚 𐍈 𓀀 🜁",
]


def random_texts(seed: int = 20240601) -> list[str]:
    """Random strings: a mixed alphabet, arbitrary code points, dense punctuation/control."""
    rng = random.Random(seed)
    alpha = (list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`")
             + [" ", "  ", "\t", "\n", "\r\n", "'s", "'T", "'re", "'LL"]
             + list("éüßøÅçñ日本語中文한국ДЖЯ😀🚀∑√٣४¼Ⅻ")
             + ["\u200d", "\u00a0", "\u3000", "\u2028", "\u0085", "\u0301", "\ufeff", "\u00ad"])
    dense = list("!?.,;:-_=+*/\\|@#$%^&~`'\"") + [chr(i) for i in range(32)] + list("aZ09 \n\t\x7f\x85\xa0é日")
    out = []
    for _ in range(250):
        out.append("".join(rng.choice(alpha) for _ in range(rng.randint(1, 30))))
    for _ in range(150):
        out.append("".join(chr(rng.choice([rng.randint(32, 0xD7FF), rng.randint(0xE000, 0x10FFFF),
                                           rng.randint(0, 0x7F), rng.randint(0x80, 0x3000)]))
                           for _ in range(rng.randint(1, 12))))
    for _ in range(150):
        out.append("".join(rng.choice(dense) for _ in range(rng.randint(1, 16))))
    return out


def write_vocab_gguf(meta: dict, dst: str) -> None:
    """A GGUF file holding only `meta` (no tensors): enough for llama.cpp's vocab_only."""
    from gguf import GGUFValueType, GGUFWriter
    w = GGUFWriter(dst, arch=str(meta["general.architecture"]))
    for k, v in meta.items():
        if k == "general.architecture" or k.startswith("GGUF."):
            continue
        if isinstance(v, bool):
            w.add_key_value(k, v, GGUFValueType.BOOL)
        elif isinstance(v, str):
            w.add_key_value(k, v, GGUFValueType.STRING)
        elif isinstance(v, int):
            w.add_key_value(k, v, GGUFValueType.UINT32)
        elif isinstance(v, float):
            w.add_key_value(k, v, GGUFValueType.FLOAT32)
        elif isinstance(v, np.ndarray):
            sub = GGUFValueType.FLOAT32 if v.dtype.kind == "f" else GGUFValueType.INT32
            w.add_key_value(k, v.tolist(), GGUFValueType.ARRAY, sub_type=sub)
        elif isinstance(v, list):
            w.add_key_value(k, [str(x) for x in v], GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


WORKER = r'''
import ctypes, hashlib, json, sys
import llama_cpp as L
job = json.load(open(sys.argv[1]))
out = {}
for name, spec in job["models"].items():
    llm = L.Llama(spec["path"], vocab_only=True, verbose=False)
    vocab = L.llama_model_get_vocab(llm._model.model)
    n = L.llama_vocab_n_tokens(vocab)
    h = hashlib.sha256()
    buf = ctypes.create_string_buffer(256)
    for i in range(n):
        k = L.llama_token_to_piece(vocab, i, buf, 256, 0, False)
        p = buf.raw[:k]
        h.update(len(p).to_bytes(4, "little") + p)
    res = {"plain": [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in job["texts"]],
           "special": {str(k): llm.tokenize(job["texts"][k].encode("utf-8"), add_bos=False, special=True)
                       for k in job["special_texts"]} if spec["special"] else {},
           "bos": L.llama_vocab_bos(vocab), "eos": L.llama_vocab_eos(vocab),
           "add_bos": bool(L.llama_vocab_get_add_bos(vocab)),
           "eog": [i for i in range(n) if L.llama_vocab_is_eog(vocab, i)],
           "pieces_sha256": h.hexdigest(), "n_tokens": n}
    out[name] = res
json.dump({"version": L.__version__, "models": out}, open(sys.argv[2], "w"))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-python", default="/tmp/llvenv/bin/python")
    args = ap.parse_args()
    from inference.tokenizer import gguf_metadata

    texts = CORPUS + random_texts()
    special_texts = [k for k, t in enumerate(texts) if "<" in t or "\u2581" in t]
    smol = gguf_metadata(SMOLLM2)
    with tempfile.TemporaryDirectory() as tmp:
        models = {"smollm2": {"path": SMOLLM2, "special": True},
                  "stories260K": {"path": STORIES_GGUF, "special": True}}
        for pre in PRE_VARIANTS:
            path = os.path.join(tmp, f"pre-{pre}.gguf")
            write_vocab_gguf(with_pre(smol, pre), path)
            models[f"pre-{pre}"] = {"path": path, "special": False}
        path = os.path.join(tmp, "spm32k.gguf")
        write_vocab_gguf(sentencepiece_gguf_metadata(os.path.join(ROOT, "tests", "data", "tokenizer.model")), path)
        models["spm32k"] = {"path": path, "special": True}
        job, res = os.path.join(tmp, "job.json"), os.path.join(tmp, "out.json")
        with open(job, "w") as f:
            json.dump({"texts": texts, "special_texts": special_texts, "models": models}, f)
        subprocess.run([args.llama_python, "-c", WORKER, job, res], check=True,
                       stderr=subprocess.DEVNULL)
        with open(res) as f:
            results = json.load(f)
    fixture = {"about": "llama.cpp token ids; written by make_llamacpp_reference.py (not a test)",
               "llama_cpp_python": results["version"], "texts": texts, "models": results["models"]}
    os.makedirs(os.path.dirname(REFERENCE), exist_ok=True)
    with open(REFERENCE, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {REFERENCE} ({os.path.getsize(REFERENCE) // 1024} KiB, {len(texts)} texts, "
          f"{len(results['models'])} vocabularies)")


if __name__ == "__main__":
    main()
