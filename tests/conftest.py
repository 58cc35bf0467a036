"""Shared pytest fixtures: the optional real-data samples and tokenizer files, skipping with the reason when
they are missing (a bare clone with no network and no ../shared beside it runs the rest)."""
import os

import pytest

from helpers import SHARED_DATA

TIKTOKEN_CACHE = SHARED_DATA / "tokenizers" / "tiktoken_cache"

# tiktoken downloads GPT-2's files on first use; point it at the offline copy when there is one.
if TIKTOKEN_CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))


@pytest.fixture
def shared_data():
    """The real text samples beside the project; tests that need them skip on a bare clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (local copies of public samples: README, Tests)")
    return SHARED_DATA


@pytest.fixture
def gpt2_available() -> bool:
    """True when tiktoken's GPT-2 files can be loaded (from TIKTOKEN_CACHE_DIR or the network)."""
    try:
        import tiktoken
        tiktoken.get_encoding("gpt2")
        return True
    except Exception as e:
        pytest.skip(f"GPT-2 tokenizer files unavailable ({type(e).__name__}); set TIKTOKEN_CACHE_DIR to a copy")
