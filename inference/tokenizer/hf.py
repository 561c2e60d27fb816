"""A Hugging Face tokenizer.json (beside safetensors weights), with tokenizer_config.json.

`tokenizers` loads the file and encodes text; its special added tokens are split off by
our own special-token handling (so typed spellings stay text unless special=True), its
non-special added tokens it matches itself, as Hugging Face and llama.cpp both do. BOS,
EOS, `add_bos_token` and the chat template come from tokenizer_config.json (a
chat_template.jinja beside it wins, as in recent transformers); generation_config.json's
`eos_token_id` list adds to the end-of-generation set.
"""
from __future__ import annotations

import json
import os
from typing import Any

from ..errors import TokenizerError
from .base import END_OF_GENERATION_TEXTS, SpecialToken, Tokenizer


def _read_json(path: str) -> dict[str, Any]:
    """A JSON object beside the tokenizer ({} when absent), size- and depth-bounded."""
    from ..errors import ModelFormatError
    from ..formats.common import parse_json
    from .files import read_tokenizer_file
    if not os.path.lexists(path):
        return {}
    try:
        data = parse_json(read_tokenizer_file(path), path)
    except ModelFormatError as e:
        raise TokenizerError(str(e)) from None
    return data if isinstance(data, dict) else {}


def _read_text(path: str) -> str:
    from .files import read_tokenizer_file
    try:
        return read_tokenizer_file(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _token_content(v: Any) -> str | None:
    """A tokenizer_config token entry: a string or {"content": ...}."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) and v else None


def hf_chat_template(folder: str) -> str | None:
    """The chat template of a Hugging Face model directory (chat_template.jinja, else
    tokenizer_config.json's `chat_template`), whatever its tokenizer file is."""
    return _chat_template(folder, _read_json(os.path.join(folder, "tokenizer_config.json")))


def _chat_template(folder: str, cfg: dict) -> str | None:
    jinja = os.path.join(folder, "chat_template.jinja")
    if os.path.lexists(jinja):
        return _read_text(jinja)
    t = cfg.get("chat_template")
    if isinstance(t, list):  # [{"name": "default", "template": ...}, ...]
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        t = named.get("default") or next(iter(named.values()), None)
    return t if isinstance(t, str) and t else None


def load_hf_tokenizer(path: str) -> Tokenizer:
    """tokenizer.json -> Tokenizer (one-line TokenizerError on a bad file)."""
    from .bytelevel import TokenizersBPE, bytes_of_piece
    from tokenizers import Tokenizer as HFTokenizer

    from .files import read_tokenizer_file
    try:
        hf = HFTokenizer.from_str(read_tokenizer_file(path).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except Exception as e:  # the Rust side raises its own exception type
        raise TokenizerError(f"{path} is not a tokenizer.json: {str(e).splitlines()[0][:200]}") from None
    folder = os.path.dirname(os.path.abspath(path))
    cfg = _read_json(os.path.join(folder, "tokenizer_config.json"))
    gen = _read_json(os.path.join(folder, "generation_config.json"))
    spec = json.loads(hf.to_str())
    byte_level = "ByteLevel" in json.dumps({k: spec.get(k) for k in ("pre_tokenizer", "decoder")})

    added = hf.get_added_tokens_decoder()
    n = max(hf.get_vocab_size(with_added_tokens=True), max(added, default=-1) + 1)
    texts = [hf.id_to_token(i) or "" for i in range(n)]
    token_bytes: list[bytes] = []
    for i, t in enumerate(texts):
        a = added.get(i)
        if a is not None:
            token_bytes.append(b"" if a.special else a.content.encode("utf-8"))
        elif byte_level:
            token_bytes.append(bytes_of_piece(t))
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            token_bytes.append(bytes([int(t[3:5], 16)]))
        else:
            token_bytes.append(t.replace("\u2581", " ").encode("utf-8"))
    specials = [SpecialToken(a.content, i, True, a.lstrip, a.rstrip) for i, a in added.items() if a.special]
    control = {s.id for s in specials}

    def tid(v: Any) -> int | None:
        text = _token_content(v)
        return hf.token_to_id(text) if text else None

    bos, eos = tid(cfg.get("bos_token")), tid(cfg.get("eos_token"))
    add_bos = cfg.get("add_bos_token")
    if add_bos is not None and not isinstance(add_bos, bool):
        raise TokenizerError(f"{folder}/tokenizer_config.json: add_bos_token must be true or false, "
                             f"got {str(add_bos)[:40]!r}")
    if add_bos is None and bos is not None:  # transformers adds it through the post-processor
        with_special = hf.encode("a", add_special_tokens=True).ids
        add_bos = bool(with_special) and with_special[0] == bos
    eog = {eos} | {i for i, t in enumerate(texts) if t in END_OF_GENERATION_TEXTS and i in control}
    gen_eos = gen.get("eos_token_id")
    for i in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
        if isinstance(i, int):
            eog.add(i)
    hf.encode_special_tokens = True   # special added tokens are ours to split off
    tok = TokenizersBPE(hf, kind="hf", token_texts=texts, token_bytes=token_bytes,
                        control_ids=control, specials=specials, bos_id=bos, eos_id=eos,
                        add_bos=bool(add_bos), eog_ids={i for i in eog if i is not None},
                        path=path, chat_template=_chat_template(folder, cfg),
                        unk_id=tid(cfg.get("unk_token")))
    if not byte_level:  # sentencepiece-style pieces (Llama 2 / TinyLlama tokenizer.json)
        tok.strip_space_after_bos = tok.stops_at_bos = True
    return tok
