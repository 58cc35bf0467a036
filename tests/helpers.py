"""What several test files share: paths, the tests' tokenizer and model, prepared folders written from
documents. Imported as `from helpers import ...` (pyproject.toml puts tests/ on the path)."""
import json
import pathlib

import numpy as np

import prepare
from model import GPTConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"  # local copies of public samples (README "Tests"); optional


def byte_spec(delimiter_id: int = 256) -> dict:
    """The tests' tokenizer: a byte-level BPE with no merges (token i is byte i, the delimiter after them), so
    a document's tokens are its UTF-8 bytes and expected tokens need no tokenizer library."""
    spec = prepare.bpe_spec("bpe:257", prepare.SPLIT_PATTERN, {bytes([i]): i for i in range(256)})
    spec["special_tokens"] = {prepare.DELIMITER: delimiter_id}
    return spec


def tiny_config(**overrides):
    """A small model.GPTConfig for fast tests (no zero-init, so every weight takes part from the start)."""
    base = dict(vocab_size=96, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, block_size=64, zero_init=False)
    return GPTConfig(**{**base, **overrides})


def write_prepared_dir(path, spec=None, train=(), val=(), shard_tokens=None, dataset="test"):
    """A folder as prepare.py lays it out, from documents: {train,val}_NNNNNN.bin shards (each document's tokens
    after the delimiter, cut every shard_tokens tokens, one shard per split by default), tokenizer.json (unless
    the spec is gpt2's) and meta.json. spec: a tokenizer spec, byte_spec() by default (a document's tokens are its
    UTF-8 bytes). A split without documents gets no shard."""
    spec = spec or byte_spec()
    enc = prepare.encoding_from_spec(spec)
    delimiter = prepare.delimiter_id(enc)
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = {"name": spec["name"], "vocab_size": enc.n_vocab, "delimiter_id": delimiter}
    if spec["name"] != "gpt2":
        (path / prepare.TOKENIZER_FILE).write_text(json.dumps(spec))
        tokenizer["file"] = prepare.TOKENIZER_FILE
    splits = {}
    for split, docs in (("train", list(train)), ("val", list(val))):
        if not docs:
            continue
        tokens = np.array([t for d in docs for t in [delimiter] + enc.encode_ordinary(d)],
                          dtype=np.uint16 if enc.n_vocab <= 2 ** 16 else np.uint32)
        step = shard_tokens or len(tokens)
        shards = [tokens[i:i + step] for i in range(0, len(tokens), step)]
        for i, shard in enumerate(shards):
            prepare.write_shard(path / f"{split}_{i:06d}.bin", shard, vocab_size=enc.n_vocab)
        splits[split] = {"docs": len(docs), "tokens": len(tokens), "bytes": sum(len(d.encode()) for d in docs),
                         "shards": len(shards)}
    (path / "meta.json").write_text(json.dumps({"dataset": dataset, "tokenizer": tokenizer, "splits": splits}))
    return path


def write_txt(path, docs) -> pathlib.Path:
    """A .txt as TinyStories ships it: each document followed by an <|endoftext|> line."""
    path.write_text("".join(f"{d}\n<|endoftext|>\n" for d in docs), encoding="utf-8")
    return path
