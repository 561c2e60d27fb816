"""Byte-level BPE (GPT-2 style: SmolLM2, Llama 3, Qwen2, ...) on Hugging Face `tokenizers`.

Text is first cut into words by the pre-tokenizer the vocabulary was trained with (a
sequence of regular expressions; GGUF files name it in `tokenizer.ggml.pre`, with
llama.cpp's names), each word's UTF-8 bytes are spelled with GPT-2's byte-to-character
table, and the merges are applied by rank. `tokenizers` does all of that in Rust; this
module only chooses the pre-tokenizer and maps ids back to bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import TokenizerError
from .base import SpecialToken, Tokenizer

# -- pre-tokenizers by llama.cpp's name ------------------------------------------------
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp matches regexes without \p{..} with std::wregex on text whose non-ASCII
# whitespace became U+000B, so a class spanning U+0800..U+4E00 never takes U+2003 or U+3000
_CJK = "\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff&&[^\\s]"


@dataclass(frozen=True)
class PreTokenizer:
    """Regular expressions applied in turn (each splits the pieces the previous one left;
    a match and the text between matches both become pieces), and llama.cpp's defaults."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False   # a word that is itself a token is not merged (Llama 3)
    add_bos: bool = False         # llama.cpp's add_bos when the GGUF does not say


_LLAMA3 = PreTokenizer((LLAMA3,), ignore_merges=True, add_bos=True)
_SAME_AS_LLAMA3 = PreTokenizer((LLAMA3,))
_QWEN2 = PreTokenizer((QWEN2,))
_GPT2 = PreTokenizer((GPT2,))
_SMOLLM = PreTokenizer((r"\p{N}", GPT2))
_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"))
_FALCON = PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"))
_DEEPSEEK_CODER = PreTokenizer(("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", f"[{_CJK}]+", r"\p{N}"))
_DEEPSEEK3 = PreTokenizer((r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                           "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?"
                           "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"))
# llama.cpp runs these through std::wregex, whose \s also takes U+001C..U+001F
_PORO_RE = " ?[^(\\s\x1c-\x1f|.,!?…。，、।۔،)]+"
_PORO = PreTokenizer((_PORO_RE,))
_VIKING = PreTokenizer((_PORO_RE, r"\p{N}"))

#: llama.cpp's `tokenizer.ggml.pre` names (those that are plain regular expressions).
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT,
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                     "midm-2.0", "lfm2"), _LLAMA3),
    **dict.fromkeys(("dbrx", "smaug-bpe"), _SAME_AS_LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan"), _QWEN2),
    **dict.fromkeys(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es",
                     "jina-v2-de", "a.x-4.0", "mellum", "mpt", "olmo", "jais", "trillion",
                     "granite-docling", "exaone4"), _GPT2),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                     "minerva-7b"), _SMOLLM),
    "falcon": _FALCON,
    "deepseek-coder": _DEEPSEEK_CODER,
    "deepseek-v3": _DEEPSEEK3,
    **dict.fromkeys(("poro-chat", "bloom", "gpt3-finnish"), _PORO),
    "viking": _VIKING,
}


def pre_tokenizer(name: str | None, where: str = "") -> PreTokenizer:
    """The pre-tokenizer llama.cpp calls `name` ('' or None: llama.cpp's 'default')."""
    spec = PRE_TOKENIZERS.get(name or "default")
    if spec is None:
        raise TokenizerError(f"{where + ': ' if where else ''}the pre-tokenizer {name!r} is not supported "
                             f"(supported: smollm, llama-bpe, qwen2, gpt-2, default and "
                             f"{len(PRE_TOKENIZERS) - 5} others)")
    return spec


def hf_pre_tokenizer(spec: PreTokenizer, missing_bytes: str = ""):
    """`tokenizers` pre-tokenizer: the regex splits, then GPT-2's byte spelling.

    `missing_bytes`: byte characters the vocabulary lacks. `tokenizers` drops such a
    character before merging (its neighbours may then merge), llama.cpp after merging
    (it keeps them apart), so they are cut out into words of their own first.
    """
    from tokenizers import Regex, pre_tokenizers as pt
    steps = [pt.Split(Regex(r), "isolated") for r in spec.regexes]
    steps.append(pt.ByteLevel(add_prefix_space=False, use_regex=False))
    if missing_bytes:
        cls = "".join("\\" + c if c in "\\]^-[" else c for c in missing_bytes)
        steps.append(pt.Split(Regex(f"[{cls}]"), "isolated"))
    return pt.Sequence(steps)


# -- GPT-2's byte <-> character table -----------------------------------------------
def _byte_chars() -> list[str]:
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


BYTE_CHARS = _byte_chars()
CHAR_BYTES = {c: b for b, c in enumerate(BYTE_CHARS)}


def bytes_of_piece(piece: str) -> bytes:
    """A vocabulary string spelled in GPT-2's byte characters, as raw bytes (a character
    outside the table stands for its own UTF-8)."""
    out = bytearray()
    for ch in piece:
        b = CHAR_BYTES.get(ch)
        if b is None:
            out += ch.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)


class TokenizersBPE(Tokenizer):
    """Encoding by a `tokenizers.Tokenizer` (text holding no special token), plus the
    special-token handling, ids and decoding table shared by all tokenizers here."""

    def __init__(self, hf: object, *, kind: str, token_texts: Sequence[str],
                 token_bytes: Sequence[bytes], control_ids: Iterable[int],
                 specials: Iterable[SpecialToken], bos_id: int | None, eos_id: int | None,
                 add_bos: bool, eog_ids: Iterable[int], path: str = "",
                 chat_template: str | None = None, pre: str = "", unk_id: int | None = None) -> None:
        self.kind = kind
        self.pre = pre
        self._hf = hf
        super().__init__(token_texts=token_texts, token_bytes=token_bytes, control_ids=control_ids,
                         specials=specials, bos_id=bos_id, eos_id=eos_id, add_bos=add_bos,
                         eog_ids=eog_ids, path=path, chat_template=chat_template, unk_id=unk_id)

    def _encode_fragment(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids  # type: ignore[attr-defined]

    def describe(self) -> str:
        pre = f" (pre-tokenizer {self.pre})" if self.pre else ""
        return super().describe().replace(",", f"{pre},", 1)


def build_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], spec: PreTokenizer):
    """A `tokenizers.Tokenizer` for a GGUF byte-level vocabulary (no added tokens: special
    tokens are split off before text reaches it)."""
    from tokenizers import Tokenizer as HFTokenizer, models
    try:
        model = models.BPE(vocab, merges, ignore_merges=spec.ignore_merges)
    except Exception as e:  # the Rust side names the bad merge
        raise TokenizerError(f"the BPE merges do not fit the vocabulary: {str(e).splitlines()[0]}") from None
    hf = HFTokenizer(model)
    hf.pre_tokenizer = hf_pre_tokenizer(spec, "".join(c for c in BYTE_CHARS if c not in vocab))
    return hf
