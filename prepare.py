"""
Prepare a training corpus: raw text in, verified token shards and meta.json out.

    python prepare.py --dataset tinystories --out data/tinystories              # HF download, BPE 8192
    python prepare.py --input a.txt b.jsonl.gz --tokenizer gpt2 --out data/mine  # local files
    python prepare.py --dataset paloma-c4-en --out data/eval/paloma-c4-en         # an official eval set (all val)
    python prepare.py --dataset tinystories --max_docs 20000 --tokenizer bpe:4096 --out data/ts-small  # a quick start

What it does, in order, streaming (memory does not grow with the input's size):
  read documents -> clean (strip, drop empty, exact de-duplication, TinyStories mojibake repair)
  -> split train/val by a hash of each document (stable across re-runs and input order)
  -> [train a byte-level BPE on the train split, when --tokenizer bpe:N]
  -> tokenize on all cores -> write shards DIR/{train,val}_NNNNNN.bin -> DIR/meta.json last.

The shard format is modded-nanogpt's / llm.c's: 256 little-endian int32 of header (magic 20240520,
version 1, n_tokens), then uint16 tokens; for vocabularies over 65,536 llm.c's magic 20240801,
version 7 with uint32 tokens. Every document is preceded by the delimiter token <|endoftext|>.

As a module it is the one place that reads shards and tokenizers (train.py, eval_bpb.py, judge.py):
write_shard, open_shard, list_shards, read_meta, tokenizer_spec, encoding_from_spec, delimiter_id,
token_byte_lengths. It prepares data and nothing else; what every script shares is in common.py.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import os
import pathlib
import re
import shutil
import sys
import time

import numpy as np

import common

# -----------------------------------------------------------------------------
# Shard format (llm.c / modded-nanogpt)

MAGIC_U16, VERSION_U16 = 20240520, 1   # uint16 tokens
MAGIC_U32, VERSION_U32 = 20240801, 7   # uint32 tokens, for vocabularies over 65,536
HEADER_INTS = 256                      # 256 int32 = 1024 bytes of header
HEADER_BYTES = HEADER_INTS * 4
FORMATS = {MAGIC_U16: (VERSION_U16, np.dtype("<u2")), MAGIC_U32: (VERSION_U32, np.dtype("<u4"))}
DELIMITER = "<|endoftext|>"
SHARD_NAME = re.compile(r"^(?:.+_)?(train|val)_(\d{6})\.bin$")  # ours, and modded-nanogpt's fineweb_train_000001.bin


def shard_format(max_token: int) -> tuple[int, int, np.dtype]:
    """(magic, version, dtype) of the smallest format that holds token ids up to max_token."""
    if max_token < 2**16:
        return MAGIC_U16, VERSION_U16, FORMATS[MAGIC_U16][1]
    if max_token < 2**32:
        return MAGIC_U32, VERSION_U32, FORMATS[MAGIC_U32][1]
    raise ValueError(f"token id {max_token} does not fit in uint32")


def write_shard(path, tokens: np.ndarray, *, vocab_size: int | None = None, dtype=None) -> None:
    """Write one shard atomically (temp file + rename), so a crash never leaves a file a reader trusts.
    The format is uint16 when every id fits (or vocab_size <= 65,536 when given, so all shards of a
    dataset share one format), else llm.c's uint32 format; dtype ("uint16"/"uint32") forces one."""
    path = pathlib.Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{path}: tokens must be a 1-D array, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0):
        raise ValueError(f"{path}: negative token id {int(tokens.min())}")
    max_token = (vocab_size - 1) if vocab_size is not None else (int(tokens.max()) if tokens.size else 0)
    if tokens.size and int(tokens.max()) > max_token:
        raise ValueError(f"{path}: token id {int(tokens.max())} >= vocab_size {vocab_size}")
    magic, version, dtype_ = shard_format(max_token)
    if dtype is not None:
        magic = {np.dtype("uint16"): MAGIC_U16, np.dtype("uint32"): MAGIC_U32}.get(np.dtype(dtype))
        if magic is None:
            raise ValueError(f"{path}: dtype must be uint16 or uint32, got {dtype}")
        if magic == MAGIC_U16 and max_token >= 2**16:
            raise ValueError(f"{path}: token ids up to {max_token} do not fit uint16; use uint32")
        version, dtype_ = FORMATS[magic]
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = magic, version, tokens.size
    common.write_file_atomic(path, header, np.ascontiguousarray(tokens, dtype=dtype_))


def read_shard_header(path) -> tuple[np.dtype, int]:
    """Validate a shard's header and size; return (dtype, n_tokens)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: shard not found; run prepare.py to write it")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte header; "
                         "the file is truncated or not a token shard, re-run prepare.py")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, n_tokens = int(header[0]), int(header[1]), int(header[2])
    if magic not in FORMATS:
        raise ValueError(f"{path}: magic {magic} is not a token shard's ({MAGIC_U16} or {MAGIC_U32}); "
                         "was it written by prepare.py, llm.c or modded-nanogpt?")
    expected_version, dtype = FORMATS[magic]
    if version != expected_version:
        raise ValueError(f"{path}: version {version} with magic {magic}, expected {expected_version}; "
                         "re-run prepare.py")
    expected_size = HEADER_BYTES + n_tokens * dtype.itemsize
    if n_tokens < 0 or size != expected_size:
        raise ValueError(f"{path}: header says {n_tokens} tokens ({expected_size} bytes) but the file has "
                         f"{size} bytes; it is truncated or corrupt, re-run prepare.py")
    return dtype, n_tokens


def open_shard(path) -> np.memmap:
    """Memory-map one shard's tokens (uint16 or uint32) after checking magic, version and size."""
    dtype, n_tokens = read_shard_header(path)
    if n_tokens == 0:
        raise ValueError(f"{path}: shard holds no tokens; re-run prepare.py")
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))


def list_shards(data_dir, split: str) -> list[pathlib.Path]:
    """Sorted DIR/{split}_NNNNNN.bin (also modded-nanogpt's *_{split}_NNNNNN.bin).
    When DIR has a meta.json, its shard count must match, so leftovers of another run are caught."""
    data_dir = pathlib.Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"{data_dir}: data folder not found; run prepare.py --out {data_dir}")
    shards = sorted(p for p in data_dir.iterdir()
                    if (m := SHARD_NAME.match(p.name)) and m.group(1) == split)
    if not shards:
        raise ValueError(f"{data_dir}: no {split}_NNNNNN.bin shards; run prepare.py --out {data_dir}")
    meta_path = data_dir / "meta.json"
    if meta_path.is_file():
        expected = read_meta(data_dir).get("splits", {}).get(split, {}).get("shards")
        if expected is not None and expected != len(shards):
            raise ValueError(f"{data_dir}: meta.json lists {expected} {split} shards but the folder has "
                             f"{len(shards)}; the folder mixes two runs, re-run prepare.py --out {data_dir}")
    return shards


def read_meta(data_dir) -> dict:
    """DIR/meta.json as a dict, its shape checked: what train.py, eval_bpb.py and list_shards read from it
    (`tokenizer`, `splits`) has the types prepare.py writes, or a ValueError names the file and the fix.
    Keys may be absent (a hand-made folder); a reader that needs one says so."""
    path = pathlib.Path(data_dir) / "meta.json"
    if not path.is_file():
        raise ValueError(f"{path}: not found; the folder was not prepared or its run was interrupted, "
                         f"run prepare.py --out {data_dir}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({type(e).__name__}: {e}); re-run prepare.py --out {data_dir}") from None
    problem = meta_problem(meta)
    if problem:
        raise ValueError(f"{path}: {problem}; the file was edited or is not prepare.py's, "
                         f"re-run prepare.py --out {data_dir}")
    return meta


def meta_problem(meta) -> str | None:
    """What is wrong with the shape of a meta.json's content, or None."""
    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def shown(v):
        text = repr(v)
        return text if len(text) <= 60 else text[:57] + "..."
    if not isinstance(meta, dict):
        return f"expected a JSON object, got {type(meta).__name__}"
    if "splits" in meta:
        splits = meta["splits"]
        if not isinstance(splits, dict):
            return f'"splits" must be an object {{"train": {{...}}, "val": {{...}}}}, got {type(splits).__name__}'
        for split, info in splits.items():
            if not isinstance(info, dict):
                return f'"splits"."{split}" must be an object {{"docs", "tokens", "bytes", "shards"}}, got {type(info).__name__}'
            for key in ("docs", "tokens", "bytes", "shards"):
                if key in info and not count(info[key]):
                    return f'"splits"."{split}"."{key}" must be a whole number >= 0, got {shown(info[key])}'
    if "tokenizer" in meta:
        tokenizer = meta["tokenizer"]
        if not isinstance(tokenizer, dict):
            return f'"tokenizer" must be an object {{"name", "file", "vocab_size", ...}}, got {type(tokenizer).__name__}'
        if "name" in tokenizer and not isinstance(tokenizer["name"], str):
            return f'"tokenizer"."name" must be a string (gpt2 or bpe:N), got {shown(tokenizer["name"])}'
        for key in ("vocab_size", "delimiter_id"):
            if tokenizer.get(key) is not None and not count(tokenizer[key]):
                return f'"tokenizer"."{key}" must be a whole number >= 0, got {shown(tokenizer[key])}'
        file = tokenizer.get("file")
        if file is not None and (not isinstance(file, str) or pathlib.Path(file).name != file or file in ("", ".", "..")):
            return f'"tokenizer"."file" must be a file name inside the folder (e.g. {TOKENIZER_FILE}), got {shown(file)}'
    return None


# -----------------------------------------------------------------------------
# Tokenizers: a "spec" is a plain dict (str/int/list/dict only, so it fits in a weights_only checkpoint)
#   {"name": "gpt2"}
#   {"name": "bpe:4096", "pattern": str, "ranks": [base64 of token bytes, index = rank],
#    "special_tokens": {"<|endoftext|>": 4095}}

# GPT-4's split pattern with numbers in groups of 1-2 instead of 1-3 (as nanochat): with a small
# vocabulary, three-digit number tokens are a poor use of the budget.
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
TOKENIZER_FILE = "tokenizer.json"


def bpe_spec(name: str, pattern: str, mergeable_ranks: dict[bytes, int]) -> dict:
    """The spec of a byte-level BPE with ranks 0..n-1 and the delimiter as id n (so n_vocab = n + 1)."""
    ranks = [None] * len(mergeable_ranks)
    for token, rank in mergeable_ranks.items():
        ranks[rank] = base64.b64encode(token).decode("ascii")
    if any(r is None for r in ranks):
        raise ValueError(f"tokenizer {name}: ranks are not 0..{len(ranks) - 1}")
    return {"name": name, "pattern": pattern, "ranks": ranks, "special_tokens": {DELIMITER: len(ranks)}}


def tokenizer_spec(data_dir) -> dict:
    """The spec of the tokenizer a prepared folder used (from meta.json and its tokenizer file)."""
    data_dir = pathlib.Path(data_dir)
    info = read_meta(data_dir).get("tokenizer")
    if not isinstance(info, dict) or not isinstance(info.get("name"), str):
        raise ValueError(f"{data_dir / 'meta.json'}: no tokenizer.name; re-run prepare.py")
    if info["name"] == "gpt2":
        return {"name": "gpt2"}
    return load_tokenizer_file(data_dir / (info.get("file") or TOKENIZER_FILE))


def load_tokenizer_file(path) -> dict:
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: tokenizer file not found; re-run prepare.py")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-run prepare.py") from None
    check_spec(spec, str(path))
    return spec


def check_spec(spec, where: str = "tokenizer spec") -> None:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"{where}: expected a dict with a 'name' (gpt2 or bpe:N)")
    if spec["name"] == "gpt2":
        return
    ok = (isinstance(spec.get("pattern"), str) and isinstance(spec.get("ranks"), list)
          and all(isinstance(r, str) for r in spec["ranks"])
          and isinstance(spec.get("special_tokens"), dict) and DELIMITER in spec["special_tokens"])
    if not ok:
        raise ValueError(f"{where}: a BPE spec needs 'pattern' (str), 'ranks' (list of base64 str) and "
                         f"'special_tokens' with {DELIMITER}")


def encoding_from_spec(spec: dict):
    """A tiktoken.Encoding for a spec (gpt2 from tiktoken's files, a BPE from its ranks)."""
    import tiktoken
    check_spec(spec)
    if spec["name"] == "gpt2":
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # tiktoken downloads the files on first use; offline that fails
            raise ValueError(f"tiktoken could not load gpt2 ({type(e).__name__}); go online once or set "
                             "TIKTOKEN_CACHE_DIR to a folder holding its files") from None
    try:
        ranks = {base64.b64decode(r): i for i, r in enumerate(spec["ranks"])}
    except ValueError as e:
        raise ValueError(f"tokenizer {spec['name']}: bad base64 in ranks ({e})") from None
    if len(ranks) != len(spec["ranks"]):
        raise ValueError(f"tokenizer {spec['name']}: duplicate tokens in ranks")
    return tiktoken.Encoding(name=spec["name"], pat_str=spec["pattern"], mergeable_ranks=ranks,
                             special_tokens={k: int(v) for k, v in spec["special_tokens"].items()})


def delimiter_id(enc) -> int:
    """Id of the document delimiter <|endoftext|> (50256 for GPT-2)."""
    try:
        return enc.encode_single_token(DELIMITER)
    except KeyError:
        raise ValueError(f"tokenizer {enc.name} has no {DELIMITER} token") from None


def token_byte_lengths(enc) -> np.ndarray:
    """int32[n_vocab]: UTF-8 byte length of each token id, 0 for special tokens (and unused ids).
    For BPB: a byte-level BPE's tokens concatenate to the text's bytes, so their lengths sum to it."""
    special = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    lengths = np.zeros(enc.n_vocab, dtype=np.int32)
    for i in range(enc.n_vocab):
        if i in special:
            continue
        try:
            lengths[i] = len(enc.decode_single_token_bytes(i))
        except KeyError:
            pass
    return lengths


# -----------------------------------------------------------------------------
# Named datasets (Hugging Face). Each one is either files of a dataset repo downloaded with
# huggingface_hub (then read by the local readers below, so document boundaries are exact), or a
# `datasets` stream. Revisions: the resolved commit is recorded in meta.json; --revision pins one.

DATASETS = {
    "tinystories": dict(repo="roneneldan/TinyStories", files=["TinyStoriesV2-GPT4-train.txt"],
                        tokenizer="bpe:8192", tinystories=True,
                        about="TinyStoriesV2-GPT4 train (GPT-4 stories only), ~2.1 GB"),
    "tinystories-valid": dict(repo="roneneldan/TinyStories", files=["TinyStoriesV2-GPT4-valid.txt"],
                              tokenizer="bpe:8192", tinystories=True, eval_set=True,
                              about="TinyStoriesV2-GPT4 valid, the official eval set of the TinyStories tracks"),
    "tinystories-all": dict(repo="roneneldan/TinyStories", files=["TinyStories_all_data.tar.gz"],
                            tokenizer="bpe:8192", tinystories=True,
                            about="TinyStories_all_data.tar.gz JSON shards (GPT-3.5 + GPT-4; --gpt4_only)"),
    "simplewiki": dict(repo="lsb/simplewiki2023", stream=dict(split="train"), field="text",
                       tokenizer="bpe:8192", about="Simple English Wikipedia 2023 (tinystories-wiki track)"),
    "fineweb-edu": dict(repo="HuggingFaceFW/fineweb-edu", stream=dict(name="sample-10BT", split="train"),
                        field="text", tokenizer="gpt2", about="FineWeb-Edu sample-10BT, streamed"),
    # Marin's score (eval/paloma/c4_en/bpb): the primary eval of the fineweb-edu and open tracks. Gated on the Hub.
    "paloma-c4-en": dict(repo="allenai/paloma", stream=dict(name="c4_en", split="val"), field="text",
                         tokenizer="gpt2", eval_set=True, gated=True,
                         about="Paloma C4-EN validation (config c4_en, split val), Marin's score and the primary eval "
                               "of the fineweb-edu and open tracks; gated: accept its terms on Hugging Face, log in"),
    "c4-val": dict(repo="allenai/c4", stream=dict(data_files={"validation": "en/c4-validation.*.json.gz"},
                                                  split="validation"),
                   field="text", tokenizer="gpt2", eval_set=True,
                   about="C4 en validation (allenai/c4; eval id c4-en-val), another text than Paloma's C4-EN"),
}
HF_HOST = "huggingface.co"


def check_hub_reachable() -> None:
    """Fail in a second with one clear line instead of the hub client's minute of retries."""
    import socket
    from urllib.parse import urlparse
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE"):
        return  # the user relies on the local HF cache
    host = urlparse(os.environ.get("HF_ENDPOINT", f"https://{HF_HOST}")).hostname or HF_HOST
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        raise ValueError(f"cannot reach the Hugging Face Hub ({host}: {e.strerror or e}); go online, or "
                         "download the files and pass them with --input") from None


def quiet_hf_logs() -> None:
    import logging
    for name in ("huggingface_hub", "datasets", "fsspec", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)


def hub_error(repo: str, e: Exception) -> ValueError:
    first_line = (str(e).strip().splitlines() or [""])[0][:200]
    gated = any(spec["repo"] == repo and spec.get("gated") for spec in DATASETS.values())
    if gated or "gated" in f"{type(e).__name__} {e}".lower():
        return ValueError(f"could not fetch {repo} from the Hugging Face Hub ({type(e).__name__}: {first_line}); it is "
                          f"a gated dataset: accept its terms at https://{HF_HOST}/datasets/{repo} with your account, "
                          "then log in here (huggingface-cli login, or set HF_TOKEN) and run again")
    return ValueError(f"could not fetch {repo} from the Hugging Face Hub ({type(e).__name__}: {first_line}); "
                      "check the network (and HF_TOKEN), or pass local files with --input")


def resolve_revision(repo: str, revision: str | None) -> str:
    from huggingface_hub import HfApi
    return HfApi().dataset_info(repo, revision=revision).sha


def remote_files(name: str, revision: str | None) -> tuple[list[tuple], dict]:
    """A named dataset's files to be read over HTTP as they are needed (--max_docs: no whole download)."""
    spec = DATASETS[name]
    check_hub_reachable()
    quiet_hf_logs()
    try:
        sha = resolve_revision(spec["repo"], revision)
    except Exception as e:
        raise hub_error(spec["repo"], e) from None
    return [(spec["repo"], sha, f) for f in spec["files"]], {"hf": spec["repo"], "revision": sha, "files": spec["files"],
                                                              "read": "streamed, up to --max_docs documents"}


def remote_file_tasks(repo: str, revision: str, name: str):
    """Tasks of a dataset repo's file read through huggingface_hub's HfFileSystem, a block at a time: when the
    reader stops (--max_docs), so does the download."""
    try:
        from huggingface_hub import HfFileSystem
        f = HfFileSystem().open(f"datasets/{repo}@{revision}/{name}", "rb", block_size=TASK_BYTES)
    except Exception as e:
        raise hub_error(repo, e) from None
    with f:
        try:
            yield from (tar_json_tasks(pathlib.Path(name), f) if name.endswith(".tar.gz")
                        else txt_tasks(pathlib.Path(name), f))
        except (OSError, EOFError) as e:
            raise hub_error(repo, e) from None


def download_dataset_files(name: str, revision: str | None) -> tuple[list[pathlib.Path], dict]:
    """Download a named dataset's files into the HF cache; returns local paths and its meta.json entry."""
    spec = DATASETS[name]
    check_hub_reachable()
    quiet_hf_logs()
    try:
        from huggingface_hub import hf_hub_download
        sha = resolve_revision(spec["repo"], revision)
        paths = [pathlib.Path(hf_hub_download(spec["repo"], f, repo_type="dataset", revision=sha))
                 for f in spec["files"]]
    except Exception as e:
        raise hub_error(spec["repo"], e) from None
    return paths, {"hf": spec["repo"], "revision": sha, "files": spec["files"]}


def stream_dataset(name: str, revision: str | None):
    """(document iterator of a `datasets` stream, its meta.json entry)."""
    spec = DATASETS[name]
    check_hub_reachable()
    quiet_hf_logs()
    try:
        import datasets
        sha = resolve_revision(spec["repo"], revision)
        ds = datasets.load_dataset(spec["repo"], streaming=True, revision=sha, **spec["stream"])
    except Exception as e:
        raise hub_error(spec["repo"], e) from None

    def documents():
        try:
            for row in ds:
                yield row[spec["field"]]
        except Exception as e:  # streams fail lazily, in the middle of a run
            raise hub_error(spec["repo"], e) from None
    source = {"hf": spec["repo"], "revision": sha, **{k: v for k, v in spec["stream"].items()}}
    return documents(), source


# -----------------------------------------------------------------------------
# Reading: every source becomes a stream of "tasks", each ~TASK_BYTES of raw text that a worker
# parses, cleans, hashes and tokenizes. The main process only reads bytes and cuts them at
# document boundaries, so it never becomes the bottleneck.

TASK_BYTES = 1 << 20
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".json.gz", ".jsonl.gz", ".parquet")
BLANK_LINE = re.compile(r"\n[ \t\r]*\n")


def input_kind(path: pathlib.Path) -> str:
    name = path.name.lower()
    for suffix in sorted(LOCAL_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: unsupported file type; use one of {', '.join(LOCAL_SUFFIXES)}")


def check_input_file(path: pathlib.Path) -> None:
    if not path.exists():
        raise ValueError(f"{path}: input file not found; check the path")
    if not path.is_file():
        raise ValueError(f"{path}: not a file; pass the files themselves (e.g. {path}/*.jsonl)")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror}); check its permissions") from None
    input_kind(path)


def txt_has_delimiter(path: pathlib.Path) -> bool:
    """A .txt holds <|endoftext|>-separated documents if the marker appears anywhere (memchr speed)."""
    import mmap
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(DELIMITER.encode()) >= 0


def txt_tasks(path: pathlib.Path, fileobj=None):
    """Cut a .txt into tasks at document boundaries: after a <|endoftext|> marker, or inside a blank line.
    fileobj: read from it instead of `path` (a remote file: markers are looked for in its first block)."""
    marker = DELIMITER.encode()
    f = open(path, "rb") if fileobj is None else contextlib.nullcontext(fileobj)
    with f as f:
        first = f.read(TASK_BYTES)
        by_marker = txt_has_delimiter(path) if fileobj is None else marker in first
        yield from _txt_cut(f, first, by_marker, str(path))


def _txt_cut(f, first: bytes, by_marker: bool, where: str):
    marker = DELIMITER.encode()
    kind = "txt_marker" if by_marker else "txt_blank"

    def last_boundary(buf: bytes) -> int:
        if by_marker:
            i = buf.rfind(marker)
            return -1 if i < 0 else i + len(marker)
        i = max(buf.rfind(b"\n\n"), buf.rfind(b"\n\r\n"))
        return -1 if i < 0 else i + 1  # cut between the two newlines: both halves strip cleanly

    carry, chunk = b"", first
    while chunk:
        buf = carry + chunk
        cut = last_boundary(buf)
        if cut <= 0:  # one document longer than a task: keep reading
            carry = buf
        else:
            yield (kind, where, buf[:cut])
            carry = buf[cut:]
        chunk = f.read(TASK_BYTES)
    if carry:
        yield (kind, where, carry)


def open_maybe_gzip(path: pathlib.Path):
    import gzip
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def json_tasks(path: pathlib.Path):
    """JSON lines (.jsonl, .json.gz, .jsonl.gz), cut into tasks of whole lines; a file whose first
    character is '[' is one JSON array of records (TinyStories_all_data's shards), read whole."""
    with open_maybe_gzip(path) as f:
        try:
            head = f.peek(64).lstrip()[:1]
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: cannot read it ({e}); is it really gzip?") from None
        if head == b"[":
            yield ("json_array", str(path), f.read())
            return
        line_no, lines, size = 1, [], 0
        try:
            for line in f:
                lines.append(line)
                size += len(line)
                if size >= TASK_BYTES:
                    yield ("jsonl", f"{path}:{line_no}", lines)
                    line_no, lines, size = line_no + len(lines), [], 0
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: cannot read it ({e}); the file is corrupt or truncated") from None
        if lines:
            yield ("jsonl", f"{path}:{line_no}", lines)


def parquet_tasks(path: pathlib.Path):
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    column = next((c for c in ("text", "story") if c in names), None)
    if column is None:
        raise ValueError(f"{path}: no 'text' column (columns: {', '.join(names)}); rename the text column to 'text'")
    for batch in pf.iter_batches(batch_size=1024, columns=[column]):
        yield ("docs", str(path), batch.column(0).to_pylist())


def tar_json_tasks(path: pathlib.Path, fileobj=None):
    """TinyStories_all_data.tar.gz: data00.json ... data49.json, each a JSON array; one member at a time
    (from `fileobj` as a stream when given)."""
    import tarfile
    with (tarfile.open(path, "r:*") if fileobj is None else tarfile.open(fileobj=fileobj, mode="r|*")) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".json"):
                yield ("json_array", f"{path}/{member.name}", tar.extractfile(member).read())


def limit_documents(tasks, max_docs: int, gpt4_only: bool = False):
    """The first max_docs documents of a task stream (those with text: blank ones are passed on, uncounted), as
    tasks of parsed documents; stops pulling tasks, and so reading or downloading, once it has them."""
    _worker.setdefault("gpt4_only", gpt4_only)
    left = max_docs
    for task in tasks:
        docs = []
        for doc in task_documents(task):
            docs.append(doc)
            left -= bool(isinstance(doc, str) and doc.strip())
            if left == 0:
                break
        yield ("parsed", task[1], docs)
        if left == 0:
            return


def stream_tasks(documents, where: str):
    batch, size = [], 0
    for doc in documents:
        batch.append(doc)
        size += len(doc)
        if size >= TASK_BYTES:
            yield ("docs", where, batch)
            batch, size = [], 0
    if batch:
        yield ("docs", where, batch)


def file_tasks(path: pathlib.Path):
    kind = input_kind(path)
    if kind == ".txt":
        return txt_tasks(path)
    if kind == ".parquet":
        return parquet_tasks(path)
    return json_tasks(path)


# -----------------------------------------------------------------------------
# Cleaning. TinyStories' files hold mojibake: UTF-8 punctuation decoded as cp1252 and re-encoded
# ("â€™" for "’"); the byte 0x9D of "”" has no cp1252 character and was lost, leaving a bare "â€".

def _cp1252_continuation_chars() -> str:
    chars = []
    for b in range(0x80, 0xC0):
        try:
            chars.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            chars.append(chr(b))  # undefined in cp1252: lenient decoders kept it as the C1 control
    return "".join(chars)


_CONT = "[" + re.escape(_cp1252_continuation_chars()) + "]"
MOJIBAKE = re.compile(f"[\u00c2-\u00df]{_CONT}|[\u00e0-\u00ef]{_CONT}{{2}}|[\u00f0-\u00f4]{_CONT}{{3}}|\u00e2\u20ac")
MOJIBAKE_LEAD = re.compile("[\u00c2-\u00f4]")


def _unmojibake(match: re.Match) -> str:
    s = match.group(0)
    if s == "\u00e2\u20ac":
        return "\u201d"  # "â€" + lost 0x9D = right double quotation mark
    raw = bytearray()
    for ch in s:
        try:
            raw += ch.encode("cp1252")
        except UnicodeEncodeError:
            raw.append(ord(ch))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return s


def fix_mojibake(text: str, mode: str) -> tuple[str | None, str | None]:
    """(text or None if dropped, what happened: None | "repaired" | "dropped")."""
    if not MOJIBAKE_LEAD.search(text) or not MOJIBAKE.search(text):
        return text, None
    if mode == "drop":
        return None, "dropped"
    fixed = MOJIBAKE.sub(_unmojibake, text)
    if MOJIBAKE.search(fixed):  # something that looks like mojibake but did not decode: do not guess
        return None, "dropped"
    return fixed, "repaired"


def clean_document(doc: str, mojibake: str) -> tuple[str | None, str | None]:
    """The cleaning every document gets (prepare.py's shards and eval_bpb.py's raw text alike): strip, drop
    empty, and with mojibake "repair"/"drop" the TinyStories repair. (text or None if dropped, what happened:
    None | "empty" | "repaired" | "dropped"). With "off" the text is kept byte for byte."""
    doc = doc.strip()
    if not doc:
        return None, "empty"
    if mojibake == "off":
        return doc, None
    return fix_mojibake(doc, mojibake)


def doc_hash(data: bytes) -> int:
    """64-bit hash of a document's UTF-8 bytes: decides de-duplication and the train/val split."""
    import hashlib
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


# -----------------------------------------------------------------------------
# Workers: parse + clean + hash (+ tokenize) one task. Module-level state, set once per process.

_worker = {}


def init_worker(spec: dict | None, mojibake: str, dtype: str, gpt4_only: bool = False) -> None:
    _worker["enc"] = encoding_from_spec(spec) if spec is not None else None
    _worker["gpt4_only"] = gpt4_only
    _worker["mojibake"] = mojibake
    _worker["dtype"] = np.dtype(dtype)


def task_documents(task) -> list[str]:
    kind, where, payload = task
    try:
        if kind == "docs":
            return [d if isinstance(d, str) else "" for d in payload]
        if kind == "parsed":  # already split by limit_documents (None: a record --gpt4_only leaves out)
            return payload
        if kind in ("txt_marker", "txt_blank"):
            text = payload.decode("utf-8")
            if kind == "txt_blank":
                return BLANK_LINE.split(text)
            docs = text.split(DELIMITER)
            # a task is cut just after a marker: that cut is not an empty document
            return docs[:-1] if text.endswith(DELIMITER) else docs
        if kind == "jsonl":
            return [json_text(json_line(line, where, i), where, i) for i, line in enumerate(payload) if line.strip()]
        if kind == "json_array":
            records = json.loads(payload)
            if not isinstance(records, list):
                raise ValueError(f"{where}: a JSON file must hold records, one per line or in one array")
            return [json_text(r, where, i) for i, r in enumerate(records)]
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start} of a chunk); "
                         "convert the file to UTF-8") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg}); fix or remove that line") from None
    raise AssertionError(kind)


def line_location(where: str, index: int) -> str:
    """'file:N' for the index-th line of a task that starts at 'file:first_line'."""
    path, _, line = where.rpartition(":")
    return f"{path}:{int(line) + index}" if line.isdigit() else f"{where} record {index}"


def json_line(line: bytes, where: str, index: int):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{line_location(where, index)}: invalid JSON ({e.msg}); fix or remove that line") from None


def json_text(record, where: str, index: int) -> str:
    """The text of one JSON record: its 'text' field, or TinyStories' 'story'."""
    if isinstance(record, dict):
        for key in ("text", "story"):
            if isinstance(record.get(key), str):
                if _worker.get("gpt4_only") and record.get("source") not in (None, "GPT-4"):
                    return None  # counted as not_gpt4
                return record[key]
    raise ValueError(f"{line_location(where, index)}: a record needs a string 'text' (or 'story') field")


def task_size(task) -> int:
    """Input bytes a task covers (characters for already-decoded documents), for the progress bar."""
    payload = task[2]
    return len(payload) if isinstance(payload, bytes) else sum(len(x) for x in payload if x is not None)


def process_task(task) -> dict:
    """Worker: documents -> cleaned, hashed, optionally tokenized (each preceded by the delimiter)."""
    mode, enc = _worker["mojibake"], _worker["enc"]
    counts = {"read": 0, "not_gpt4": 0, "empty": 0, "mojibake_repaired": 0, "mojibake_dropped": 0}
    texts, hashes, nbytes = [], [], []
    for doc in task_documents(task):
        counts["read"] += 1
        if doc is None:
            counts["not_gpt4"] += 1
            continue
        doc, what = clean_document(doc, mode)
        if what:
            counts["empty" if what == "empty" else "mojibake_" + what] += 1
        if doc is None:
            continue
        data = doc.encode("utf-8")
        texts.append(doc)
        hashes.append(doc_hash(data))
        nbytes.append(len(data))
    out = {"counts": counts, "hashes": hashes, "nbytes": nbytes, "raw_bytes": task_size(task)}
    if enc is None:
        out["texts"] = texts
        return out
    eot, flat, ntok = delimiter_id(enc), [], []
    for doc in texts:
        ids = enc.encode_ordinary(doc)
        flat.append(eot)
        flat.extend(ids)
        ntok.append(len(ids) + 1)
    out["tokens"] = np.array(flat, dtype=_worker["dtype"])
    out["ntok"] = ntok
    return out


def run_tasks(tasks, workers: int, initargs: tuple):
    """Results of process_task in task order, on `workers` processes (0: in this process), with a
    bounded number of tasks in flight so memory does not grow with the input."""
    from collections import deque
    if workers <= 0:
        init_worker(*initargs)
        for task in tasks:
            yield process_task(task)
        return
    import multiprocessing as mp
    with mp.get_context().Pool(workers, initializer=init_worker, initargs=initargs) as pool:
        pending = deque()
        for task in tasks:
            pending.append(pool.apply_async(process_task, (task,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# -----------------------------------------------------------------------------
# Split: by the document's hash, so the same document lands in the same split whatever the input
# order. --val_fraction F: val iff hash < F * 2^64. --val_docs N: val = the N smallest hashes, kept in
# a max-heap while streaming (a document above the heap's top can never enter it: straight to train).

class Splitter:
    def __init__(self, val_docs: int | None, val_fraction: float, all_val: bool):
        self.val_docs, self.all_val = val_docs, all_val
        self.threshold = int(val_fraction * 2**64)
        self.heap = []  # max-heap of the --val_docs candidates: (-hash, hash, item)

    def decide(self, h: int) -> str:
        """'train', 'val', or 'candidate' (may be among the --val_docs smallest: call hold())."""
        if self.all_val:
            return "val"
        if self.val_docs is None:
            return "val" if h < self.threshold else "train"
        if len(self.heap) < self.val_docs or (self.val_docs and h < self.heap[0][1]):
            return "candidate"
        return "train"

    def hold(self, h: int, item):
        """Keep a candidate; returns the item it pushed out of the heap (now final train) or None."""
        import heapq
        if len(self.heap) < self.val_docs:
            heapq.heappush(self.heap, (-h, h, item))
            return None
        return heapq.heappushpop(self.heap, (-h, h, item))[2]

    def held_val(self) -> list:
        """The --val_docs documents in hash order (so val shards do not depend on input order)."""
        return [item for _, _, item in sorted(self.heap, key=lambda t: t[1])]


# -----------------------------------------------------------------------------
# BPE training (rustbpe, or the `tokenizers` library where rustbpe is not installed)

def parse_bpe_size(name: str) -> int:
    try:
        n = int(name.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"--tokenizer {name}: expected bpe:N with an integer N, e.g. bpe:8192") from None
    if n < 257:
        raise ValueError(f"--tokenizer {name}: a byte-level BPE needs N >= 257 (256 bytes + <|endoftext|>)")
    return n


def train_bpe(texts, vocab_size: int, name: str) -> dict:
    """Train a byte-level BPE with vocab_size - 1 ranks (the delimiter is the last id); returns its spec."""
    try:
        import rustbpe
    except ImportError:
        return train_bpe_tokenizers(texts, vocab_size, name)
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(texts, vocab_size - 1, pattern=SPLIT_PATTERN)
    return bpe_spec(name, tok.get_pattern(), dict(tok.get_mergeable_ranks()))


def byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-unicode map (what `tokenizers`' ByteLevel uses), inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def train_bpe_tokenizers(texts, vocab_size: int, name: str) -> dict:
    try:
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        raise ValueError(f"--tokenizer {name}: training a BPE needs rustbpe or tokenizers; "
                         f"pip install rustbpe (it is in requirements.txt)") from None
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    decode = byte_level_decoder()
    # ids are the 256 bytes then the merges in the order they were learned: a valid tiktoken rank order
    ranks = {bytes(decode[c] for c in token): i for token, i in tok.get_vocab().items()}
    return bpe_spec(name, SPLIT_PATTERN, ranks)


# -----------------------------------------------------------------------------
# Output

class ShardWriter:
    """Appends documents' tokens to DIR/{split}_NNNNNN.bin, each shard exactly shard_tokens long
    (the last one shorter), as llm.c does; documents may continue into the next shard."""

    def __init__(self, out_dir: pathlib.Path, split: str, shard_tokens: int, vocab_size: int, dtype):
        self.out_dir, self.split, self.vocab_size = out_dir, split, vocab_size
        self.buf = np.empty(shard_tokens, dtype=dtype)  # pages are touched as they fill
        self.fill = self.shards = self.docs = self.tokens = self.bytes = 0

    def add(self, tokens: np.ndarray, docs: int, nbytes: int) -> None:
        self.docs += docs
        self.bytes += nbytes
        self.tokens += tokens.size
        while tokens.size:
            n = min(tokens.size, self.buf.size - self.fill)
            self.buf[self.fill:self.fill + n] = tokens[:n]
            self.fill += n
            tokens = tokens[n:]
            if self.fill == self.buf.size:
                self.flush()

    def flush(self) -> None:
        if self.fill:
            write_shard(self.out_dir / f"{self.split}_{self.shards:06d}.bin", self.buf[:self.fill],
                        vocab_size=self.vocab_size, dtype=self.buf.dtype)
            self.shards += 1
            self.fill = 0

    def summary(self) -> dict:
        return {"docs": self.docs, "tokens": self.tokens, "bytes": self.bytes, "shards": self.shards}


OUTPUT_NAME = re.compile(r"(train|val)_\d{6}\.bin|\.(train|val)_\d{6}\.bin\.tmp\d+|\.?meta\.json(\.tmp\d+)?|"
                         + re.escape(TOKENIZER_FILE))  # what a run writes in its folder (and temp files it may leave)


@contextlib.contextmanager
def building(out: pathlib.Path):
    """A fresh temporary folder beside `out` to write a run into; swapped in when the block completes, removed
    when it fails (bad input, a full disk, Ctrl-C), so `out` keeps its old shards, meta.json and tokenizer
    until the new ones are whole. Temp folders that killed runs left beside `out` are removed first."""
    out = out.resolve()
    if not out.name or (out.exists() and not out.is_dir()):
        raise ValueError(f"--out {out}: not a folder; choose a folder to write the shards into")
    pattern = re.compile(rf"\.{re.escape(out.name)}\.preparing(\d+)")
    tmp = out.parent / f".{out.name}.preparing{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for p in out.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m and p.is_dir() and not common.process_alive(int(m.group(1))):  # a live one is another run's: left alone
                shutil.rmtree(p, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create the folder {tmp} beside it ({e.strerror}); prepare.py "
                         "writes there and swaps the result in when complete") from None
    try:
        try:
            yield tmp
        except OSError as e:
            hint = "free some disk space or pass another --out; " if e.errno == errno.ENOSPC else ""
            raise ValueError(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}; {hint}"
                             f"{out} was left as it was") from None
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_in(tmp: pathlib.Path, out: pathlib.Path) -> None:
    """Make the completed folder `tmp` the folder `out`. A new `out` is one rename. An existing one keeps the
    files prepare.py did not write: its old meta.json goes first (from then until the new one lands the folder
    is not trusted), then its old shards and tokenizer; the new files move in, meta.json last."""
    if not out.exists():
        os.rename(tmp, out)
        return
    (out / "meta.json").unlink(missing_ok=True)
    for p in out.iterdir():
        if OUTPUT_NAME.fullmatch(p.name) and p.is_file():
            p.unlink()
    for p in sorted(tmp.iterdir(), key=lambda p: p.name == "meta.json"):
        os.replace(p, out / p.name)


# -----------------------------------------------------------------------------
# The pipeline

def resolve_tokenizer(arg: str):
    """--tokenizer: 'gpt2', 'bpe:N' (trained here), or a prepared folder / tokenizer.json to reuse."""
    if arg == "gpt2":
        return {"name": "gpt2"}
    if arg.startswith("bpe:"):
        return parse_bpe_size(arg)
    path = pathlib.Path(arg)
    if path.is_dir():
        if (path / "meta.json").is_file():
            return tokenizer_spec(path)
        path = path / TOKENIZER_FILE
    if path.is_file():
        return load_tokenizer_file(path)
    raise ValueError(f"--tokenizer {arg}: expected gpt2, bpe:N (e.g. bpe:8192), or a prepared folder or "
                     f"{TOKENIZER_FILE} to reuse")


def plan_sources(datasets: list[str], inputs: list[str], revision: str | None, gpt4_only: bool,
                 max_docs: int | None = None):
    """Validate everything before any download or write; returns a function that opens the task
    streams (called once per pass) and the sources' descriptions. The dataset names are known ones (prepare).
    max_docs: each named dataset, and the --input files together, stop after that many documents."""
    paths = [pathlib.Path(p) for p in inputs]
    for p in paths:
        check_input_file(p)
    downloaded, remote, streamed, sources = [], [], [], []
    for name in datasets:
        if "files" in DATASETS[name] and max_docs is not None:
            files, source = remote_files(name, revision)
            remote.append(files)
        elif "files" in DATASETS[name]:
            files, source = download_dataset_files(name, revision)
            downloaded += files
        else:
            stream_dataset(name, revision)  # fail now, not after an hour, when the hub is unreachable
            streamed.append(name)
            source = {"hf": DATASETS[name]["repo"], **DATASETS[name]["stream"]}
        sources.append({"dataset": name, **source})
    for p in paths:
        sources.append({"path": str(p), "bytes": p.stat().st_size})
    if gpt4_only and not any(d == "tinystories-all" for d in datasets) and not paths:
        raise ValueError("--gpt4_only applies to tinystories-all (or local TinyStories JSON); drop it")

    def limited(tasks):
        return tasks if max_docs is None else limit_documents(tasks, max_docs, gpt4_only)

    def open_tasks():
        for p in downloaded:
            yield from limited(tar_json_tasks(p) if p.name.endswith(".tar.gz") else file_tasks(p))
        for files in remote:  # one dataset: its files together
            yield from limited(t for repo, sha, f in files for t in remote_file_tasks(repo, sha, f))
        for name in streamed:
            docs, _ = stream_dataset(name, revision)
            yield from limited(stream_tasks(docs, name))
        yield from limited(t for p in paths for t in file_tasks(p))
    # the bar counts input bytes: known in advance only for uncompressed text files read whole
    plain = all(input_kind(p) in (".txt", ".jsonl", ".json") for p in downloaded + paths)
    total = sum(p.stat().st_size for p in downloaded + paths) if plain and not streamed and not remote and max_docs is None else None
    return open_tasks, sources, total


def documents_for_bpe(results, splitter: Splitter, dedup: bool, max_chars: int, info: dict):
    """Pass 1: the cleaned, de-duplicated train documents (up to max_chars) for the BPE trainer."""
    seen = set()
    for r in results:
        for text, h in zip(r["texts"], r["hashes"]):
            if dedup:
                if h in seen:
                    continue
                seen.add(h)
            where = splitter.decide(h)
            if where == "candidate":
                text = splitter.hold(h, text)
            if where == "val" or text is None:
                continue
            info["docs"] += 1
            info["chars"] += len(text)
            yield text
            if info["chars"] >= max_chars:
                info["sampled"] = True
                return


def tokenize_and_write(results, splitter: Splitter, writers: dict, dedup: bool, counts: dict, progress):
    """Pass 2: dedup, split and write each task's tokens. Most tasks are all train with no duplicate,
    so their tokens go to the shard in one copy."""
    seen = set()
    for r in results:
        for k, v in r["counts"].items():
            counts[k] += v
        hashes, nbytes, ntok, tokens = r["hashes"], r["nbytes"], r["ntok"], r["tokens"]
        starts = np.zeros(len(ntok) + 1, dtype=np.int64)
        np.cumsum(ntok, out=starts[1:])
        to_train = np.zeros(len(hashes), dtype=bool)
        for i, h in enumerate(hashes):
            if dedup:
                if h in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(h)
            where = splitter.decide(h)
            if where == "train":
                to_train[i] = True
            elif where == "val":
                writers["val"].add(tokens[starts[i]:starts[i + 1]], 1, nbytes[i])
            else:  # held until the end; what it pushes out is final train
                pushed_out = splitter.hold(h, (tokens[starts[i]:starts[i + 1]].copy(), nbytes[i]))
                if pushed_out is not None:
                    writers["train"].add(pushed_out[0], 1, pushed_out[1])
        if to_train.all():
            writers["train"].add(tokens, len(hashes), sum(nbytes))
        elif to_train.any():
            writers["train"].add(tokens[np.repeat(to_train, ntok)], int(to_train.sum()),
                                 int(np.asarray(nbytes)[to_train].sum()))
        progress.update(r["raw_bytes"])
        progress.set_postfix(docs=writers["train"].docs + writers["val"].docs + len(splitter.heap), refresh=False)
    for doc_tokens, doc_bytes in splitter.held_val():
        writers["val"].add(doc_tokens, 1, doc_bytes)
    splitter.heap.clear()


def vocab_size_of(tok) -> int:
    """n_vocab of a --tokenizer choice before it exists: gpt2, bpe:N (an int here), or a spec."""
    if isinstance(tok, int):
        return tok
    if tok["name"] == "gpt2":
        return 50257
    return max(len(tok["ranks"]), 1 + max(int(v) for v in tok["special_tokens"].values()))


def default_mojibake(datasets: list[str], inputs: list[str]) -> str:
    """TinyStories' files need the repair; other text (C4, FineWeb) is kept byte for byte."""
    tinystories = any(DATASETS[d].get("tinystories") for d in datasets) or \
        any("tinystories" in pathlib.Path(p).name.lower() for p in inputs)
    return "repair" if tinystories else "off"


def prepare(args) -> dict:
    """Run the whole pipeline for parsed arguments; returns meta.json's content."""
    from tqdm import tqdm
    datasets, inputs = args.dataset or [], args.input or []
    if not datasets and not inputs:
        raise ValueError("nothing to prepare: pass --dataset NAME or --input FILE ...")
    for name in datasets:
        if name not in DATASETS:
            raise ValueError(f"--dataset {name}: unknown dataset; choose from {', '.join(DATASETS)} "
                             "or pass local files with --input")
    eval_sets = [d for d in datasets if DATASETS[d].get("eval_set")]
    if eval_sets and (len(eval_sets) < len(datasets) or inputs):
        raise ValueError(f"--dataset {eval_sets[0]} is an eval set: prepare it alone, into its own folder "
                         f"(e.g. --out data/eval/...)")
    all_val = args.all_val or bool(eval_sets)
    tok_arg = args.tokenizer or (DATASETS[datasets[0]]["tokenizer"] if datasets else "gpt2")
    tok = resolve_tokenizer(tok_arg)
    if isinstance(tok, int) and all_val:
        raise ValueError(f"--tokenizer {tok_arg} would train a BPE, but an all-val eval set has no train split; "
                         "reuse the training folder's tokenizer, e.g. --tokenizer data/tinystories")
    vocab = vocab_size_of(tok)
    if vocab > 2**16 and args.dtype != "uint32":
        raise ValueError(f"--tokenizer {tok_arg}: {vocab} tokens do not fit uint16; pass --dtype uint32 "
                         f"(llm.c's format, magic {MAGIC_U32})")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(f"--val_fraction {args.val_fraction}: must be in [0, 1)")
    if args.val_docs is not None and args.val_docs < 0:
        raise ValueError(f"--val_docs {args.val_docs}: must be >= 0")
    if args.shard_tokens < 1 or args.bpe_train_chars < 1:
        raise ValueError("--shard_tokens and --bpe_train_chars must be >= 1")
    if not isinstance(tok, int):
        encoding_from_spec(tok)  # gpt2's files unavailable offline: say so now, before any download
    mojibake = default_mojibake(datasets, inputs) if args.mojibake == "auto" else args.mojibake
    workers = args.workers if args.workers >= 0 else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    if args.max_docs is not None and args.max_docs < 1:
        raise ValueError(f"--max_docs {args.max_docs}: must be >= 1")
    open_tasks, sources, total = plan_sources(datasets, inputs, args.revision, args.gpt4_only, args.max_docs)
    out = pathlib.Path(args.out)
    with building(out) as tmp:  # `out` itself changes only when the run is complete
        new_splitter = lambda: Splitter(args.val_docs, args.val_fraction, all_val)

        trained_on = None
        if isinstance(tok, int):  # pass 1: train the BPE on (a prefix of) the train split
            trained_on = {"docs": 0, "chars": 0, "sampled": False}
            results = run_tasks(open_tasks(), workers, (None, mojibake, "uint16", args.gpt4_only))
            texts = documents_for_bpe(results, new_splitter(), args.dedup, args.bpe_train_chars, trained_on)
            print(f"training a byte-level BPE of {tok} tokens on the train split "
                  f"(up to {args.bpe_train_chars:,} characters)...", file=sys.stderr)
            t0 = time.time()
            spec = train_bpe(texts, tok, f"bpe:{tok}")
            results.close()
            if trained_on["docs"] == 0:
                raise ValueError("no train documents to train the BPE on: every document was empty, a duplicate "
                                 "or in val; check the input or lower --val_fraction / --val_docs")
            print(f"trained in {time.time() - t0:.1f}s on {trained_on['docs']:,} documents", file=sys.stderr)
            if len(spec["ranks"]) + 1 < tok:  # named by what it is: records and tables show the name
                spec = {**spec, "name": f"bpe:{len(spec['ranks']) + 1}"}
                print(f"warning: the text only supported {len(spec['ranks']) + 1:,} of the {tok:,} tokens asked "
                      f"for: the tokenizer is {spec['name']}; give more text to train a larger one", file=sys.stderr)
        else:
            spec = tok
        enc = encoding_from_spec(spec)
        if spec["name"] != "gpt2":
            common.write_json_atomic(tmp / TOKENIZER_FILE, spec)
        dtype = np.dtype("uint32" if args.dtype == "uint32" else "uint16")

        writers = {s: ShardWriter(tmp, s, args.shard_tokens, enc.n_vocab, dtype) for s in ("train", "val")}
        counts = dict.fromkeys(("read", "not_gpt4", "empty", "mojibake_repaired", "mojibake_dropped", "duplicates"), 0)
        t0 = time.time()
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenizing ({spec['name']})",
                  disable=args.quiet) as progress:
            results = run_tasks(open_tasks(), workers, (spec, mojibake, dtype.name, args.gpt4_only))
            tokenize_and_write(results, new_splitter(), writers, args.dedup, counts, progress)
        for w in writers.values():
            w.flush()
        splits = {s: w.summary() for s, w in writers.items()}
        if splits["train"]["docs"] + splits["val"]["docs"] == 0:
            raise ValueError(f"no documents left after cleaning ({counts['read']} read, {counts['empty']} empty, "
                             f"{counts['duplicates']} duplicates, {counts['mojibake_dropped']} dropped for "
                             "mojibake); check the input files")
        if splits["val"]["docs"] == 0:
            print("warning: the val split is empty; raise --val_fraction or pass --val_docs N", file=sys.stderr)
        counts["kept"] = splits["train"]["docs"] + splits["val"]["docs"]
        magic, version = (MAGIC_U16, VERSION_U16) if dtype == np.uint16 else (MAGIC_U32, VERSION_U32)
        meta = {
            "dataset": "+".join(datasets + (["local"] if inputs else [])),
            "sources": sources,
            "max_docs": args.max_docs,  # each named dataset, and the --input files together, stopped after this many
            "cleaning": {"strip": True, "drop_empty": True, "dedup": "exact (blake2b-64 of the UTF-8 text)" if args.dedup else "off",
                         "mojibake": mojibake, "gpt4_only": args.gpt4_only, "counts": counts},
            "split": {"by": "blake2b-64 of the cleaned UTF-8 text", "val_docs": args.val_docs,
                      "val_fraction": None if args.val_docs is not None else args.val_fraction, "all_val": all_val},
            "tokenizer": {"name": spec["name"], "file": None if spec["name"] == "gpt2" else TOKENIZER_FILE,
                          "vocab_size": enc.n_vocab, "delimiter_id": delimiter_id(enc),
                          "pattern": spec.get("pattern"), "trained_on": trained_on},
            "splits": splits,
            # text tokens only: the delimiter before each document has no bytes
            "bytes_per_token": {s: (v["bytes"] / (v["tokens"] - v["docs"]) if v["tokens"] > v["docs"] else None)
                                for s, v in splits.items()},
            "format": {"magic": magic, "version": version, "dtype": dtype.name, "header_bytes": HEADER_BYTES,
                       "shard_tokens": args.shard_tokens, "delimiter": "precedes every document"},
            "command": " ".join(["python", "prepare.py"] + list(args.argv)),
        }
        common.write_json_atomic(tmp / "meta.json", meta)
    seconds = time.time() - t0
    print(f"{out}: train {splits['train']['docs']:,} docs / {splits['train']['tokens']:,} tokens in "
          f"{splits['train']['shards']} shards, val {splits['val']['docs']:,} docs / {splits['val']['tokens']:,} tokens; "
          f"{counts['duplicates']:,} duplicates, {counts['empty']:,} empty, {counts['mojibake_repaired']:,} mojibake "
          f"repaired, {counts['mojibake_dropped']:,} dropped; {seconds:.1f}s", file=sys.stderr)
    return meta


def peak_rss_mb() -> float:
    """This process's peak resident memory. /proc's VmHWM starts afresh at exec; getrusage's
    ru_maxrss would include the launching process's memory on Linux."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


# -----------------------------------------------------------------------------
# Command line

def make_parser() -> common.ArgumentParser:
    datasets = "\n".join(f"  {k:18s} {v['repo']}: {v['about']} (default tokenizer {v['tokenizer']})"
                         for k, v in DATASETS.items())
    p = common.ArgumentParser(prog="prepare.py",
                       description=__doc__.split("\n\n")[0].strip() + "\n\nnamed datasets:\n" + datasets)
    p.add_argument("--dataset", nargs="+", metavar="NAME", help="named dataset(s), downloaded through Hugging Face")
    p.add_argument("--input", nargs="+", metavar="PATH",
                   help="local files: .txt (documents separated by <|endoftext|> lines, else by blank lines), "
                        ".jsonl, .json.gz, .jsonl.gz (a 'text' or 'story' field), .parquet (a 'text' column)")
    p.add_argument("--out", help="output folder for shards, tokenizer.json and meta.json")
    p.add_argument("--tokenizer", help="gpt2 | bpe:N (train a byte-level BPE of N tokens, <|endoftext|> "
                                       "included) | a prepared folder or tokenizer.json to reuse; "
                                       "default: the dataset's, gpt2 for --input")
    p.add_argument("--val_fraction", type=common.parse_finite, default=0.005, help="share of documents in val (by hash)")
    p.add_argument("--val_docs", type=common.parse_count, help="exactly N documents in val (the N smallest hashes)")
    p.add_argument("--all_val", action="store_true",
                   help="every document goes to val (an official eval set; automatic for paloma-c4-en, c4-val, "
                        "tinystories-valid)")
    p.add_argument("--max_docs", type=common.parse_count, metavar="N",
                   help="stop each named dataset (and the --input files together) after N documents, read as they "
                        "are needed, not downloaded whole: a quick start in minutes")
    p.add_argument("--dedup", action=argparse.BooleanOptionalAction, default=True, help="exact de-duplication")
    p.add_argument("--mojibake", choices=("auto", "repair", "drop", "off"), default="auto",
                   help="TinyStories' cp1252 mojibake (â€™): auto = repair for TinyStories sources, off otherwise")
    p.add_argument("--gpt4_only", action="store_true", help="tinystories-all: keep only the GPT-4 stories")
    p.add_argument("--revision", help="Hugging Face dataset revision (commit) to pin; default: the latest, "
                                      "recorded in meta.json")
    p.add_argument("--shard_tokens", type=common.parse_count, default=100_000_000, help="tokens per shard")
    p.add_argument("--dtype", choices=("uint16", "uint32"), default="uint16",
                   help="token format; uint32 (llm.c magic 20240801) for vocabularies over 65,536")
    p.add_argument("--bpe_train_chars", type=common.parse_count, default=2_000_000_000,
                   help="train the BPE on at most this many characters of the train split")
    p.add_argument("--workers", type=common.parse_count, default=-1, help="tokenizer processes (default: all cores; 0: in-process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--report_rss", action="store_true", help=argparse.SUPPRESS)  # for bench/prepare_speed.py
    return p


def run(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    args.argv = argv
    if not args.out:
        raise ValueError("--out DIR is required (e.g. --out data/tinystories)")
    prepare(args)
    if args.report_rss:  # workers are forked (no exec), so RUSAGE_CHILDREN's ru_maxrss is theirs
        import resource
        worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(json.dumps({"main_mb": peak_rss_mb(), "worker_mb": worker_mb}))
    return 0


def main(argv=None) -> int:
    return common.run_main("prepare.py", run, argv)




if __name__ == "__main__":
    sys.exit(main())
