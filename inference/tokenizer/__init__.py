"""Tokenizers: one interface (`Tokenizer`) over every vocabulary llama-chat reads.

| file / source                         | class              | kind            |
| ------------------------------------- | ------------------ | --------------- |
| llama2.c tokenizer.bin                | SentencePieceBPE   | "llama2c"       |
| sentencepiece .model                  | SentencePieceModel | "sentencepiece" |
| GGUF, tokenizer.ggml.model = llama    | SentencePieceBPE   | "gguf-spm"      |
| GGUF, tokenizer.ggml.model = gpt2     | TokenizersBPE      | "gguf-bpe"      |
| Hugging Face tokenizer.json           | TokenizersBPE      | "hf"            |

`load_tokenizer(path, vocab_size)` takes any of those files; `tokenizer_from_gguf(meta,
path)` builds one from GGUF metadata already read; `StreamDecoder` turns streamed ids
into text without ever showing a broken character.
"""
from .base import SpecialToken, StreamDecoder, Tokenizer
from .files import load_llama2c_tokenizer, load_sentencepiece_tokenizer, load_tokenizer
from .gguf import describe_gguf_tokenizer, gguf_metadata, tokenizer_from_gguf
from ..errors import TokenizerError

__all__ = ["Tokenizer", "StreamDecoder", "SpecialToken", "TokenizerError", "load_tokenizer",
           "load_llama2c_tokenizer", "load_sentencepiece_tokenizer", "tokenizer_from_gguf",
           "describe_gguf_tokenizer", "gguf_metadata"]
