"""Shared pytest fixtures: where the optional real-data samples live."""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TIKTOKEN_CACHE = SHARED_DATA / "tokenizers" / "tiktoken_cache"

# tiktoken downloads GPT-2's files on first use; point it at the offline copy when there is one.
if TIKTOKEN_CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))


@pytest.fixture
def shared_data() -> pathlib.Path:
    """The real text samples beside the project; tests that need them skip on a bare clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture
def gpt2_available() -> bool:
    """True when tiktoken's GPT-2 files can be loaded without the network."""
    try:
        import tiktoken
        tiktoken.get_encoding("gpt2")
        return True
    except Exception:
        pytest.skip("GPT-2 tokenizer files unavailable offline")


def byte_spec(delimiter_id: int = 256) -> dict:
    """The tests' tokenizer: a byte-level BPE with no merges (token i is byte i, the delimiter after them), so
    a document's tokens are its UTF-8 bytes and expected tokens need no tokenizer library.
    Import it with `from conftest import byte_spec`."""
    import prepare
    spec = prepare.bpe_spec("bpe:257", prepare.SPLIT_PATTERN, {bytes([i]): i for i in range(256)})
    spec["special_tokens"] = {prepare.DELIMITER: delimiter_id}
    return spec


def tiny_config(**overrides):
    """A small model.GPTConfig for fast tests (no zero-init, so every weight takes part from the start).
    Import it with `from conftest import tiny_config`."""
    from model import GPTConfig
    base = dict(vocab_size=96, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, block_size=64, zero_init=False)
    return GPTConfig(**{**base, **overrides})
