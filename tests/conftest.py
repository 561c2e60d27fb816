"""Shared fixtures: the shipped model, the reference outputs, the shared model folder."""
from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SHARED = os.path.join(os.path.dirname(ROOT), "shared")
SHARED_MODELS = os.path.join(SHARED, "models")
REFERENCE_JSON = os.path.join(SHARED, "reference", "stories260K_greedy.json")
ASSETS = os.path.join(ROOT, "assets")
DATA = os.path.join(ROOT, "tests", "data")


@pytest.fixture(scope="session")
def reference() -> dict:
    if not os.path.exists(REFERENCE_JSON):
        pytest.skip("../shared/reference is not beside this checkout")
    with open(REFERENCE_JSON) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def default_model():
    from inference.loader import load_model
    return load_model()


def shared_model(name: str) -> str:
    path = os.path.join(SHARED_MODELS, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not available")
    return path
