"""Unit-test fixtures: a tiny tokenizer (for the output processor and the stream tests)."""
from __future__ import annotations

import pytest

from tests.helpers import SPECIALS, write_tokenizer
from unmask.server.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    write_tokenizer(path, SPECIALS)
    return Tokenizer.from_pretrained(path)

