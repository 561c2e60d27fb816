"""load_model end to end: which tokenizer a model gets when none is named."""
from __future__ import annotations

import os
import shutil

import pytest

from inference.errors import TokenizerError
from inference.loader import load_model

from .conftest import ASSETS, shared_model


def test_the_tokenizer_beside_a_model_must_match_its_vocabulary():
    """../shared/models holds stories260K.bin beside the 32000-token tokenizer.model and
    the 512-token tok512.*: the one whose vocabulary fits is taken."""
    m = load_model(shared_model("stories260K.bin"))
    assert m.tokenizer.vocab_size == 512 and os.path.basename(m.tokenizer.path).startswith("tok512")


def test_no_matching_tokenizer_is_one_line(tmp_path):
    shutil.copy(os.path.join(ASSETS, "stories260K.bin"), tmp_path / "m.bin")
    shutil.copy(shared_model("tokenizer.model"), tmp_path / "tokenizer.model")
    with pytest.raises(TokenizerError, match="512-token vocabulary") as e:
        load_model(str(tmp_path / "m.bin"))
    assert "\n" not in str(e.value)


def test_a_gguf_model_uses_its_own_tokenizer_and_template():
    m = load_model(shared_model("SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert m.tokenizer.kind == "gguf-bpe" and m.tokenizer.chat_template and m.chat_template
    assert m.source_dtype == "q4_1+q8_0" and m.weights.weight_type.startswith("q4_1")
