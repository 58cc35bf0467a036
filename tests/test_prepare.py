"""Tests for prepare.py: shard format, readers, tokenizers, every input format, cleaning, the split,
and bad input. Core tests use synthetic data and a pure byte-level tokenizer (token = UTF-8 byte),
so the expected tokens are computed independently of any tokenizer library."""
import errno
import gzip
import os
import json
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest

import prepare
from helpers import ROOT, byte_spec, write_txt



# -----------------------------------------------------------------------------
# helpers

@pytest.fixture
def byte_tok(tmp_path) -> str:
    path = tmp_path / "bytes_tokenizer.json"
    path.write_text(json.dumps(byte_spec()))
    return str(path)


def run(argv) -> int:
    return prepare.main([str(a) for a in argv])


def read_split(out, split) -> np.ndarray:
    return np.concatenate([np.asarray(prepare.open_shard(p)) for p in prepare.list_shards(out, split)])


def split_docs(tokens: np.ndarray, delim: int) -> list[list[int]]:
    """Independent reader: every document starts with the delimiter."""
    assert tokens[0] == delim
    starts = np.flatnonzero(tokens == delim)
    ends = list(starts[1:]) + [len(tokens)]
    return [tokens[s + 1:e].tolist() for s, e in zip(starts, ends)]


def byte_docs(out, split) -> list[str]:
    return [bytes(d).decode("utf-8") for d in split_docs(read_split(out, split), 256)]


def make_docs(n=60, seed=0) -> list[str]:
    rng = random.Random(seed)
    words = "the cat sat on a mat and ran to see big red dog é ü 日本 ’ “ ”".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 40))) + f" #{i}." for i in range(n)]


# -----------------------------------------------------------------------------
# shard format and readers

def test_header_layout_uint16(tmp_path):
    tokens = np.array([50256, 1, 2, 65535], dtype=np.int64)
    prepare.write_shard(tmp_path / "train_000000.bin", tokens)
    raw = (tmp_path / "train_000000.bin").read_bytes()
    assert len(raw) == 1024 + 2 * 4
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[:3].tolist() == [20240520, 1, 4] and not header[3:].any()
    assert np.frombuffer(raw[1024:], dtype="<u2").tolist() == tokens.tolist()
    m = prepare.open_shard(tmp_path / "train_000000.bin")
    assert isinstance(m, np.memmap) and m.dtype == np.uint16 and m.tolist() == tokens.tolist()
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file was renamed away


def test_header_layout_uint32(tmp_path):
    tokens = np.array([0, 70000, 100277])
    prepare.write_shard(tmp_path / "a.bin", tokens)
    raw = (tmp_path / "a.bin").read_bytes()
    assert np.frombuffer(raw[:12], dtype="<i4").tolist() == [20240801, 7, 3]
    assert np.frombuffer(raw[1024:], dtype="<u4").tolist() == tokens.tolist() and len(raw) == 1024 + 12
    assert prepare.open_shard(tmp_path / "a.bin").dtype == np.uint32
    # a small-vocab shard forced to uint32, and the vocab_size rule: one format for a whole dataset
    prepare.write_shard(tmp_path / "b.bin", np.array([1, 2]), dtype="uint32")
    prepare.write_shard(tmp_path / "c.bin", np.array([1, 2]), vocab_size=100277)
    for name in ("b.bin", "c.bin"):
        assert prepare.open_shard(tmp_path / name).dtype == np.uint32
    with pytest.raises(ValueError, match="uint16"):
        prepare.write_shard(tmp_path / "d.bin", np.array([70000]), dtype="uint16")


def test_open_shard_rejects_bad_files(tmp_path):
    good = tmp_path / "good.bin"
    prepare.write_shard(good, np.arange(10))
    raw = good.read_bytes()
    cases = {
        "magic": np.array([123], "<i4").tobytes() + raw[4:],
        "version": raw[:4] + np.array([2], "<i4").tobytes() + raw[8:],
        "truncated": raw[:-2],
        "shorter than": raw[:100],
    }
    for problem, data in cases.items():
        path = tmp_path / f"bad_{problem.replace(' ', '_')}.bin"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=problem) as e:
            prepare.open_shard(path)
        assert str(path) in str(e.value)
    with pytest.raises(ValueError, match="not found"):
        prepare.open_shard(tmp_path / "missing.bin")


def test_list_shards_and_read_meta(tmp_path):
    for name in ("train_000001.bin", "train_000000.bin", "val_000000.bin", "fineweb_train_000002.bin", "x.bin"):
        prepare.write_shard(tmp_path / name, np.arange(3))
    names = [p.name for p in prepare.list_shards(tmp_path, "train")]
    assert names == ["fineweb_train_000002.bin", "train_000000.bin", "train_000001.bin"]
    assert [p.name for p in prepare.list_shards(tmp_path, "val")] == ["val_000000.bin"]
    with pytest.raises(ValueError, match="no test_NNNNNN.bin"):
        prepare.list_shards(tmp_path, "test")
    with pytest.raises(ValueError, match="meta.json: not found"):
        prepare.read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        prepare.read_meta(tmp_path)
    # meta.json says 1 val shard: a leftover second one from another run is caught
    (tmp_path / "meta.json").write_text(json.dumps({"splits": {"val": {"shards": 1}}}))
    prepare.write_shard(tmp_path / "val_000001.bin", np.arange(3))
    with pytest.raises(ValueError, match="mixes two runs"):
        prepare.list_shards(tmp_path, "val")


# -----------------------------------------------------------------------------
# tokenizers

def test_spec_encoding_delimiter_and_token_bytes():
    enc = prepare.encoding_from_spec(byte_spec())
    text = "héllo 日本 ’"
    assert enc.encode_ordinary(text) == list(text.encode("utf-8"))
    assert prepare.delimiter_id(enc) == 256
    lengths = prepare.token_byte_lengths(enc)
    assert lengths.dtype == np.int32 and lengths.shape == (257,)
    assert lengths[:256].tolist() == [1] * 256 and lengths[256] == 0
    with pytest.raises(ValueError):
        prepare.encoding_from_spec({"name": "bpe:9", "ranks": "nope"})


def test_gpt2_token_bytes_sum_to_text_bytes(gpt2_available):
    enc = prepare.encoding_from_spec({"name": "gpt2"})
    assert prepare.delimiter_id(enc) == 50256 and enc.n_vocab == 50257
    lengths = prepare.token_byte_lengths(enc)
    assert lengths[50256] == 0 and lengths.min() == 0 and (lengths[:50256] >= 1).all()
    text = "Once upon a time, “Tom” said 日本語 — ok?\n\n  done"
    assert lengths[enc.encode_ordinary(text)].sum() == len(text.encode("utf-8"))


@pytest.mark.parametrize("backend", ["rustbpe", "tokenizers"])
def test_train_bpe_round_trip(backend, monkeypatch):
    pytest.importorskip(backend)  # rustbpe is in requirements.txt; tokenizers, the fallback, is optional
    if backend == "tokenizers":
        monkeypatch.setitem(sys.modules, "rustbpe", None)  # import fails: the fallback runs
    docs = make_docs(300)
    spec = prepare.train_bpe(iter(docs), 400, "bpe:400")
    json.dumps(spec)  # plain data only
    assert len(spec["ranks"]) == 399 and spec["special_tokens"] == {"<|endoftext|>": 399}
    enc = prepare.encoding_from_spec(spec)
    assert enc.n_vocab == 400
    for d in docs[:50] + ["unseen wörds 123456 \n\n tabs\t!"]:
        ids = enc.encode_ordinary(d)
        assert enc.decode_bytes(ids) == d.encode("utf-8")
        assert prepare.token_byte_lengths(enc)[ids].sum() == len(d.encode("utf-8"))
    assert len(enc.encode_ordinary(" ".join(docs[:20]))) < 0.6 * len(" ".join(docs[:20]).encode())  # it merged


def test_train_bpe_without_a_trainer_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "rustbpe", None)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ValueError, match="pip install rustbpe"):
        prepare.train_bpe(iter(make_docs(10)), 300, "bpe:300")


def test_spec_survives_weights_only_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    spec = prepare.train_bpe(iter(make_docs(100)), 300, "bpe:300")
    torch.save({"tokenizer": spec}, tmp_path / "ck.pt")
    loaded = torch.load(tmp_path / "ck.pt", weights_only=True)["tokenizer"]
    assert loaded == spec


# -----------------------------------------------------------------------------
# the pipeline on synthetic data (byte-level tokenizer: expected tokens are the UTF-8 bytes)

def test_every_input_format_gives_the_same_documents(tmp_path, byte_tok):
    import pyarrow as pa
    import pyarrow.parquet as pq
    docs = make_docs(40)
    files = {
        "marker.txt": lambda p: write_txt(p, docs),
        "blank.txt": lambda p: p.write_text("\n\n\n".join(docs) + "\n", encoding="utf-8"),
        "a.jsonl": lambda p: p.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs))),
        "b.jsonl.gz": lambda p: p.write_bytes(gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in docs).encode())),
        "c.json.gz": lambda p: p.write_bytes(gzip.compress("\n".join(json.dumps({"story": d}) for d in docs).encode())),
        "array.json.gz": lambda p: p.write_bytes(gzip.compress(json.dumps([{"story": d, "source": "GPT-4"} for d in docs]).encode())),
        "d.parquet": lambda p: pq.write_table(pa.table({"text": docs, "n": list(range(len(docs)))}), p),
    }
    for name, write in files.items():
        write(tmp_path / name)
        out = tmp_path / ("out_" + name.replace(".", "_"))
        assert run(["--input", tmp_path / name, "--tokenizer", byte_tok, "--out", out, "--workers", 0,
                    "--quiet", "--val_docs", 5]) == 0, name
        got = byte_docs(out, "train") + byte_docs(out, "val")
        assert sorted(got) == sorted(docs), name
        meta = prepare.read_meta(out)
        assert meta["splits"]["val"]["docs"] == 5 and meta["splits"]["train"]["docs"] == 35


def test_gpt4_only_keeps_gpt4_records(tmp_path, byte_tok):
    records = [{"story": f"story {i}", "source": "GPT-4" if i % 3 else "GPT-3.5"} for i in range(12)]
    (tmp_path / "data00.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    assert run(["--input", tmp_path / "data00.json", "--tokenizer", byte_tok, "--out", out, "--workers", 0,
                "--quiet", "--all_val", "--gpt4_only"]) == 0
    assert sorted(byte_docs(out, "val")) == sorted(r["story"] for r in records if r["source"] == "GPT-4")
    assert prepare.read_meta(out)["cleaning"]["counts"]["not_gpt4"] == 4


def test_blank_line_and_chunk_boundaries(tmp_path, byte_tok, monkeypatch):
    """Tasks are cut at document boundaries: a tiny task size must not change any document."""
    docs = make_docs(30) + ["a long one " * 200]
    docs = [d.replace(" and ", "\nand ") for d in docs]  # single newlines stay inside a document
    write_txt(tmp_path / "m.txt", docs)
    (tmp_path / "b.txt").write_text("\r\n \r\n".join(docs[:10]) + "\n\n\n\n" + "\n\n".join(docs[10:]), encoding="utf-8")
    monkeypatch.setattr(prepare, "TASK_BYTES", 100)
    for name in ("m.txt", "b.txt"):
        out = tmp_path / name.replace(".", "_")
        assert run(["--input", tmp_path / name, "--tokenizer", byte_tok, "--out", out, "--workers", 0,
                    "--quiet", "--all_val"]) == 0
        assert sorted(byte_docs(out, "val")) == sorted(d.strip() for d in docs), name


def test_cleaning_strip_empty_and_dedup(tmp_path, byte_tok):
    docs = make_docs(20)
    raw = docs + ["  " + docs[3] + "\n\n", docs[5], "", "   \n  "] + docs[:2]
    write_txt(tmp_path / "in.txt", raw)
    out = tmp_path / "out"
    assert run(["--input", tmp_path / "in.txt", "--tokenizer", byte_tok, "--out", out, "--workers", 0, "--quiet",
                "--val_docs", 3]) == 0
    got = byte_docs(out, "train") + byte_docs(out, "val")
    assert sorted(got) == sorted(docs)  # each once
    counts = prepare.read_meta(out)["cleaning"]["counts"]
    assert counts["duplicates"] == 4 and counts["kept"] == 20
    assert counts["empty"] == 2 + 1  # two blank documents + the empty piece after the last marker
    out2 = tmp_path / "out2"
    assert run(["--input", tmp_path / "in.txt", "--tokenizer", byte_tok, "--out", out2, "--workers", 0,
                "--quiet", "--no-dedup", "--all_val"]) == 0
    assert len(byte_docs(out2, "val")) == 24


def test_meta_counts_bytes_and_bytes_per_token(tmp_path, byte_tok):
    docs = make_docs(50)
    write_txt(tmp_path / "in.txt", docs)
    out = tmp_path / "out"
    assert run(["--input", tmp_path / "in.txt", "--tokenizer", byte_tok, "--out", out, "--workers", 0, "--quiet",
                "--val_docs", 7, "--shard_tokens", 500]) == 0
    meta = prepare.read_meta(out)
    for split in ("train", "val"):
        texts = byte_docs(out, split)
        s = meta["splits"][split]
        assert s["docs"] == len(texts)
        assert s["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
        assert s["tokens"] == len(read_split(out, split)) == s["bytes"] + s["docs"]
        assert s["shards"] == len(prepare.list_shards(out, split)) == -(-s["tokens"] // 500)
        assert meta["bytes_per_token"][split] == pytest.approx(1.0)  # one byte per token, delimiters excluded
    assert meta["tokenizer"] == {"name": "bpe:257", "file": "tokenizer.json", "vocab_size": 257, "delimiter_id": 256,
                                 "pattern": prepare.SPLIT_PATTERN, "trained_on": None}
    assert meta["format"] == {"magic": 20240520, "version": 1, "dtype": "uint16", "header_bytes": 1024,
                              "shard_tokens": 500, "delimiter": "precedes every document"}
    assert prepare.tokenizer_spec(out) == byte_spec()
    for p in prepare.list_shards(out, "train")[:-1]:
        assert len(prepare.open_shard(p)) == 500


@pytest.mark.parametrize("how", [["--val_fraction", "0.2"], ["--val_docs", "9"]])
def test_split_is_stable_under_reordered_input(tmp_path, byte_tok, how):
    docs = make_docs(200, seed=1)
    shuffled = docs[:]
    random.Random(5).shuffle(shuffled)
    write_txt(tmp_path / "a.txt", docs)
    write_txt(tmp_path / "b1.txt", shuffled[:120])
    (tmp_path / "b2.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in shuffled[120:]))
    outs = []
    for i, inputs in enumerate([[tmp_path / "a.txt"], [tmp_path / "b2.jsonl", tmp_path / "b1.txt"]]):
        out = tmp_path / f"out{i}"
        assert run(["--input", *inputs, "--tokenizer", byte_tok, "--out", out, "--workers", 0, "--quiet", *how]) == 0
        outs.append(out)
    val = [byte_docs(o, "val") for o in outs]
    train = [byte_docs(o, "train") for o in outs]
    assert sorted(val[0]) == sorted(val[1]) and 0 < len(val[0]) < 200  # same documents
    if how[0] == "--val_docs":  # held until the end and written in hash order: identical val shards
        assert (outs[0] / "val_000000.bin").read_bytes() == (outs[1] / "val_000000.bin").read_bytes()
    assert sorted(train[0]) == sorted(train[1]) and not set(train[0]) & set(val[0])
    assert sorted(train[0] + val[0]) == sorted(docs)
    if how[0] == "--val_docs":  # exactly the 9 smallest hashes, computed independently
        assert len(val[0]) == 9
        smallest = sorted(docs, key=lambda d: prepare.doc_hash(d.encode("utf-8")))[:9]
        assert val[0] == smallest


def test_workers_match_in_process(tmp_path, byte_tok):
    write_txt(tmp_path / "in.txt", make_docs(300) * 2)
    outs = []
    for w in (0, 2):
        out = tmp_path / f"w{w}"
        assert run(["--input", tmp_path / "in.txt", "--tokenizer", byte_tok, "--out", out, "--workers", w,
                    "--quiet", "--val_docs", 10]) == 0
        outs.append(out)
    for name in ("train_000000.bin", "val_000000.bin"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_all_val_eval_set(tmp_path, byte_tok):
    docs = make_docs(25)
    write_txt(tmp_path / "valid.txt", docs)
    out = tmp_path / "eval"
    assert run(["--input", tmp_path / "valid.txt", "--tokenizer", byte_tok, "--out", out, "--workers", 0,
                "--quiet", "--all_val"]) == 0
    assert byte_docs(out, "val") == docs  # input order kept
    meta = prepare.read_meta(out)
    assert meta["splits"]["train"] == {"docs": 0, "tokens": 0, "bytes": 0, "shards": 0}
    assert meta["split"]["all_val"] and meta["bytes_per_token"]["train"] is None
    with pytest.raises(ValueError):
        prepare.list_shards(out, "train")


# -----------------------------------------------------------------------------
# TinyStories mojibake

def mojibake(text: str) -> str:
    """How the TinyStories files got it: UTF-8 bytes read as cp1252, undefined bytes (0x9D) lost."""
    return text.encode("utf-8").decode("cp1252", errors="ignore")


def test_mojibake_repair_matches_original():
    original = "He said, “I’m here” — and she nodded… ‘ok’ café"
    broken = mojibake(original)
    assert "â€" in broken and broken != original
    fixed, what = prepare.fix_mojibake(broken, "repair")
    assert (fixed, what) == (original, "repaired")
    assert prepare.fix_mojibake("plain “quotes” and café stay", "repair") == ("plain “quotes” and café stay", None)
    assert prepare.fix_mojibake(broken, "drop") == (None, "dropped")


def test_mojibake_counts_in_meta(tmp_path, byte_tok):
    good = make_docs(10)
    bad = ["She said “hi” to Tom’s dog.", "It’s a “big” day — yes."]
    write_txt(tmp_path / "tinystories_sample.txt", good + [mojibake(b) for b in bad])
    for mode, expect_docs in (("auto", good + bad), ("drop", good)):
        out = tmp_path / mode
        assert run(["--input", tmp_path / "tinystories_sample.txt", "--tokenizer", byte_tok, "--out", out,
                    "--workers", 0, "--quiet", "--all_val", "--mojibake", mode]) == 0
        assert sorted(byte_docs(out, "val")) == sorted(expect_docs)
        cleaning = prepare.read_meta(out)["cleaning"]
        assert cleaning["mojibake"] == ("repair" if mode == "auto" else "drop")
        assert cleaning["counts"]["mojibake_repaired" if mode == "auto" else "mojibake_dropped"] == 2


def test_mojibake_in_real_tinystories_validation(shared_data):
    text = (shared_data / "tinystories" / "tinystories_hf_validation_head.txt").read_text(encoding="utf-8")
    docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    results = [prepare.fix_mojibake(d, "repair") for d in docs]
    repaired = [r for r, what in results if what == "repaired"]
    assert repaired and all("â€" not in r for r in repaired)
    assert any("’" in r for r in repaired) and any("“" in r for r in repaired)
    assert sum(what == "dropped" for _, what in results) == 0


# -----------------------------------------------------------------------------
# Must-show 1 and 2 on the real TinyStoriesV2 sample, against an independent tiktoken encoding

def independent_clean(path) -> list[str]:
    docs = [d.strip() for d in path.read_text(encoding="utf-8").split("<|endoftext|>")]
    return list(dict.fromkeys(d for d in docs if d))


@pytest.mark.parametrize("tokenizer", ["gpt2", "bpe:4096"])
def test_real_sample_round_trip(tmp_path, shared_data, gpt2_available, tokenizer):
    import tiktoken
    src = shared_data / "tinystories" / "TinyStoriesV2-GPT4-train_first10000lines.txt"
    out = tmp_path / "out"
    assert run(["--input", src, "--tokenizer", tokenizer, "--out", out, "--quiet", "--shard_tokens", 100_000]) == 0
    meta = prepare.read_meta(out)
    expected = independent_clean(src)
    if tokenizer == "gpt2":
        enc = tiktoken.get_encoding("gpt2")
        assert meta["tokenizer"]["delimiter_id"] == 50256 and meta["tokenizer"]["file"] is None
    else:
        assert meta["tokenizer"]["vocab_size"] == 4096 and meta["tokenizer"]["delimiter_id"] == 4095
        enc = prepare.encoding_from_spec(prepare.tokenizer_spec(out))
    delim = meta["tokenizer"]["delimiter_id"]
    expected_tokens = {tuple(enc.encode_ordinary(d)) for d in expected}
    got = {}
    for split in ("train", "val"):
        docs = split_docs(read_split(out, split), delim)
        assert len(docs) == meta["splits"][split]["docs"] > 0
        got[split] = [enc.decode(d) for d in docs]
        assert {tuple(d) for d in docs} <= expected_tokens
        n_text_tokens = sum(map(len, docs))
        assert meta["bytes_per_token"][split] == pytest.approx(meta["splits"][split]["bytes"] / n_text_tokens)
    assert not set(got["train"]) & set(got["val"])
    assert sorted(got["train"] + got["val"]) == sorted(expected)  # every cleaned document, exactly once
    assert meta["splits"]["train"]["shards"] > 1  # documents continue across shard boundaries


# -----------------------------------------------------------------------------
# bad input: one line, exit code 2

def one_error_line(capsys, argv) -> str:
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_inputs(tmp_path, capsys, byte_tok, monkeypatch):
    out = str(tmp_path / "out")
    write_txt(tmp_path / "ok.txt", make_docs(5))
    assert "unknown dataset" in one_error_line(capsys, ["--dataset", "tinystorys", "--out", out])
    assert "not found" in one_error_line(capsys, ["--input", tmp_path / "nope.txt", "--tokenizer", byte_tok, "--out", out])
    assert "not a file" in one_error_line(capsys, ["--input", tmp_path, "--tokenizer", byte_tok, "--out", out])
    (tmp_path / "x.csv").write_text("a,b\n")
    assert "unsupported file type" in one_error_line(capsys, ["--input", tmp_path / "x.csv", "--tokenizer", byte_tok, "--out", out])
    (tmp_path / "empty.txt").write_text("<|endoftext|>\n  \n<|endoftext|>\n")
    assert "no documents left" in one_error_line(capsys, ["--input", tmp_path / "empty.txt", "--tokenizer",
                                                          byte_tok, "--out", out, "--workers", 0, "--quiet"])
    assert "--dtype uint32" in one_error_line(capsys, ["--input", tmp_path / "ok.txt", "--tokenizer", "bpe:70000",
                                                       "--out", out])
    assert "bpe:N" in one_error_line(capsys, ["--input", tmp_path / "ok.txt", "--tokenizer", "bpe:lots", "--out", out])
    assert "--out" in one_error_line(capsys, ["--input", tmp_path / "ok.txt"])
    assert "--nope" in one_error_line(capsys, ["--nope"])
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    assert "bad.jsonl:2: invalid JSON" in one_error_line(capsys, ["--input", tmp_path / "bad.jsonl", "--tokenizer",
                                                                  byte_tok, "--out", out, "--workers", 0, "--quiet"])
    (tmp_path / "notext.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    assert "notext.jsonl:2" in one_error_line(capsys, ["--input", tmp_path / "notext.jsonl", "--tokenizer", byte_tok,
                                                       "--out", out, "--workers", 0, "--quiet"])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert "UTF-8" in one_error_line(capsys, ["--input", tmp_path / "latin1.txt", "--tokenizer", byte_tok,
                                              "--out", out, "--workers", 0, "--quiet"])
    # the Hugging Face Hub is unreachable: fail at once, no minute of retries
    def no_network(*a, **k):
        raise OSError(-2, "Name or service not known")
    monkeypatch.setattr("socket.getaddrinfo", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for name in ("tinystories", "c4-val"):
        line = one_error_line(capsys, ["--dataset", name, "--tokenizer", byte_tok, "--out", out])
        assert "Hugging Face Hub" in line and "--input" in line


def test_vocab_over_uint16_uses_uint32_format(tmp_path, byte_tok, capsys):
    big = tmp_path / "big.json"
    big.write_text(json.dumps(byte_spec(delimiter_id=70000)))
    write_txt(tmp_path / "in.txt", make_docs(10))
    args = ["--input", tmp_path / "in.txt", "--tokenizer", big, "--out", tmp_path / "o", "--workers", 0, "--quiet",
            "--all_val"]
    assert "--dtype uint32" in one_error_line(capsys, args)
    assert run(args + ["--dtype", "uint32"]) == 0
    shard = prepare.open_shard(tmp_path / "o" / "val_000000.bin")
    assert shard.dtype == np.uint32 and shard[0] == 70000
    assert sorted(bytes(d).decode() for d in split_docs(np.asarray(shard), 70000)) == sorted(make_docs(10))


# -----------------------------------------------------------------------------
# a failed or killed run never costs the folder it would replace (issue 13: items 5 and 13)

def snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).iterdir())}


def temp_folders(out) -> list:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.fixture
def prepared(tmp_path, byte_tok):
    """A good folder (3 train shards, val, meta.json, tokenizer.json, and a user's own file), and the
    arguments that made it."""
    write_txt(tmp_path / "ok.txt", make_docs(40))
    out = tmp_path / "out"
    args = ["--input", tmp_path / "ok.txt", "--tokenizer", byte_tok, "--out", out, "--workers", 0, "--quiet",
            "--val_docs", 5, "--shard_tokens", 1000]
    assert run(args) == 0
    (out / "notes.txt").write_text("mine")
    assert prepare.read_meta(out)["splits"]["train"]["shards"] == 3 and (out / "tokenizer.json").is_file()
    return out, args


def test_failed_run_keeps_the_old_folder(tmp_path, prepared, capsys):
    out, args = prepared
    before = snapshot(out)
    (tmp_path / "latin1.txt").write_bytes(b"fine text\n<|endoftext|>\ncaf\xe9\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    for bad in ("latin1.txt", "bad.jsonl"):  # found while the new shards are being written
        line = one_error_line(capsys, ["--input", tmp_path / "ok.txt", tmp_path / bad] + args[2:])
        assert bad in line
        assert snapshot(out) == before and temp_folders(out) == []
    # a good re-run with fewer shards replaces prepare.py's files and keeps the user's
    assert run(args[:-2] + ["--shard_tokens", 100_000]) == 0
    assert sorted(snapshot(out)) == ["meta.json", "notes.txt", "tokenizer.json", "train_000000.bin", "val_000000.bin"]
    assert len(prepare.list_shards(out, "train")) == 1 and temp_folders(out) == []


def test_gpt2_unavailable_offline_keeps_the_old_folder(prepared, capsys, monkeypatch):
    import tiktoken
    out, args = prepared
    before = snapshot(out)

    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    line = one_error_line(capsys, args[:2] + ["--tokenizer", "gpt2"] + args[4:])
    assert "gpt2" in line and "TIKTOKEN_CACHE_DIR" in line
    assert snapshot(out) == before and temp_folders(out) == []


@pytest.mark.parametrize("failure", ["disk full", "ctrl-c"])
def test_disk_full_or_interrupt_while_writing_a_shard(prepared, capsys, monkeypatch, failure):
    out, args = prepared
    before = snapshot(out)
    real_write_shard = prepare.write_shard

    def failing_write_shard(path, tokens, **kw):
        if failure == "ctrl-c":
            raise KeyboardInterrupt

        def no_space(fd):  # as the OS reports it: no file named
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", no_space)
        real_write_shard(path, tokens, **kw)
    monkeypatch.setattr(prepare, "write_shard", failing_write_shard)
    assert run(args) == (130 if failure == "ctrl-c" else 2)
    assert snapshot(out) == before and temp_folders(out) == []
    err = capsys.readouterr().err.strip()
    if failure == "ctrl-c":
        assert err == "error: prepare.py: interrupted"
    else:  # one line, no traceback
        assert err.startswith("error: prepare.py: No space left on device: ") and "\n" not in err
        assert "train_000000.bin" in err and f"free some disk space or pass another --out; {out} was left as it was" in err
    assert not [p for p in out.parent.rglob("*.tmp*")]  # write_file_atomic removed its temp file


def test_leftover_temp_folder_of_a_killed_run_is_removed_not_trusted(prepared):
    out, args = prepared
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = out.parent / f".out.preparing{int(dead.stdout)}"  # a run killed with kill -9, mid-way
    live = out.parent / f".out.preparing{os.getppid()}"  # another run still writing: not ours to remove
    for leftover in (killed, live):
        leftover.mkdir()
        (leftover / "train_000000.bin").write_bytes(b"junk")
        (leftover / "meta.json").write_text("{}")
    assert run(args[:-2] + ["--shard_tokens", 100_000]) == 0
    assert not killed.exists() and (live / "meta.json").read_text() == "{}"
    assert temp_folders(out) == [live.name]
    assert prepare.read_meta(out)["splits"]["train"]["shards"] == 1  # the new run's, not the leftover's
    assert len(prepare.open_shard(out / "train_000000.bin")) > 100


def test_out_is_a_file(tmp_path, byte_tok, capsys):
    write_txt(tmp_path / "ok.txt", make_docs(5))
    (tmp_path / "f").write_text("x")
    line = one_error_line(capsys, ["--input", tmp_path / "ok.txt", "--tokenizer", byte_tok, "--out", tmp_path / "f"])
    assert "not a folder" in line and (tmp_path / "f").read_text() == "x"


@pytest.mark.parametrize("content, problem", [
    ("[]", "expected a JSON object"),
    ('{"splits": [1, 2]}', '"splits" must be an object'),
    ('{"splits": null}', '"splits" must be an object'),
    ('{"splits": {"val": 3}}', '"splits"."val" must be an object'),
    ('{"splits": {"val": {"shards": "1"}}}', '"splits"."val"."shards" must be a whole number'),
    ('{"splits": {"train": {"tokens": true}}}', '"splits"."train"."tokens" must be a whole number'),
    ('{"tokenizer": "gpt2"}', '"tokenizer" must be an object'),
    ('{"tokenizer": {"name": 5}}', '"tokenizer"."name" must be a string'),
    ('{"tokenizer": {"name": "bpe:9", "vocab_size": -1}}', '"tokenizer"."vocab_size" must be a whole number'),
    ('{"tokenizer": {"name": "bpe:9", "file": "../../elsewhere.json"}}', '"tokenizer"."file" must be a file name'),
    ("deeply nested", "not valid JSON"),
])
def test_malformed_meta_json_is_one_clear_error(tmp_path, content, problem):
    prepare.write_shard(tmp_path / "val_000000.bin", np.arange(3))
    if content == "deeply nested":
        content = "[" * 100_000 + "]" * 100_000
    (tmp_path / "meta.json").write_text(content)
    for reader in (prepare.read_meta, prepare.tokenizer_spec, lambda d: prepare.list_shards(d, "val")):
        with pytest.raises(ValueError) as e:  # never an AttributeError or RecursionError
            reader(tmp_path)
        message = str(e.value)
        assert message.startswith(f"{tmp_path / 'meta.json'}: ") and problem in message, message
        assert f"re-run prepare.py --out {tmp_path}" in message


def test_cli_subprocess_exit_code_and_help():
    r = subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--input", "/nonexistent.txt", "--out", "/tmp/x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "c4-val" in r.stdout and "--val_docs" in r.stdout


# -----------------------------------------------------------------------------
# --max_docs, and the named datasets read through the Hub's client (faked: no network in the tests)

def test_max_docs_stops_local_input_after_n_documents(tmp_path, byte_tok, capsys):
    docs = make_docs(60)
    a, b = write_txt(tmp_path / "a.txt", docs[:20]), write_txt(tmp_path / "b.txt", docs[20:])
    out = tmp_path / "out"
    assert run(["--input", a, b, "--tokenizer", byte_tok, "--out", out, "--workers", 0, "--quiet",
                "--val_docs", 3, "--max_docs", 25]) == 0
    meta = prepare.read_meta(out)
    assert meta["max_docs"] == 25 and "--max_docs 25" in meta["command"]
    assert meta["cleaning"]["counts"]["kept"] == 25  # blank documents (the end of a.txt) are not counted
    assert sorted(byte_docs(out, "train") + byte_docs(out, "val")) == sorted(docs[:25])  # the input files together
    # with worker processes, and JSON lines: the same cut
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    assert run(["--input", jsonl, "--tokenizer", byte_tok, "--out", out, "--workers", 2, "--quiet", "--max_docs", 7,
                "--val_docs", 2]) == 0
    assert sorted(byte_docs(out, "train") + byte_docs(out, "val")) == sorted(docs[:7])
    assert prepare.read_meta(out)["max_docs"] == 7
    assert run(["--input", jsonl, "--tokenizer", byte_tok, "--out", out, "--quiet"]) == 0
    assert prepare.read_meta(out)["max_docs"] is None
    assert run(["--input", jsonl, "--tokenizer", byte_tok, "--out", out, "--max_docs", 0]) == 2
    assert "--max_docs 0" in capsys.readouterr().err


class FakeHubFile:
    """What huggingface_hub's HfFileSystem.open gives: a file read block by block; counts the bytes read."""

    def __init__(self, path, log):
        self.f, self.log = open(path, "rb"), log

    def read(self, n=-1):
        data = self.f.read(n)
        self.log["read"] += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fake_hub(monkeypatch, files, log):
    """The Hub as prepare.py reaches it: revision lookup and HfFileSystem (dataset files by name)."""
    import huggingface_hub

    class FakeFS:
        def open(self, url, mode="rb", block_size=None):
            log["urls"].append(url)
            return FakeHubFile(files[url.rsplit("/", 1)[1]], log)
    monkeypatch.setattr(prepare, "check_hub_reachable", lambda: None)
    monkeypatch.setattr(prepare, "resolve_revision", lambda repo, revision: "0123abcd")
    monkeypatch.setattr(huggingface_hub, "HfFileSystem", FakeFS)
    monkeypatch.setattr(prepare, "download_dataset_files", lambda *a: pytest.fail("downloaded the whole file"))


def test_max_docs_reads_a_named_dataset_only_as_far_as_needed(tmp_path, byte_tok, monkeypatch, capsys):
    """--dataset tinystories --max_docs N: the file is read over HTTP block by block, and reading stops with the
    N-th document (the README's CPU quick start does not download 2 GB)."""
    docs = [d * 40 for d in make_docs(3000)]  # about 5 MB: several blocks
    big = write_txt(tmp_path / "TinyStoriesV2-GPT4-train.txt", docs)
    log = {"read": 0, "urls": []}
    fake_hub(monkeypatch, {"TinyStoriesV2-GPT4-train.txt": big}, log)
    monkeypatch.setattr(prepare, "TASK_BYTES", 1 << 16)
    out = tmp_path / "ts-small"
    assert run(["--dataset", "tinystories", "--max_docs", 50, "--tokenizer", byte_tok, "--out", out,
                "--workers", 0, "--quiet", "--val_docs", 5]) == 0
    meta = prepare.read_meta(out)
    assert meta["cleaning"]["counts"]["kept"] == 50 and meta["max_docs"] == 50
    assert meta["sources"][0]["hf"] == "roneneldan/TinyStories" and meta["sources"][0]["revision"] == "0123abcd"
    assert log["urls"][0] == "datasets/roneneldan/TinyStories@0123abcd/TinyStoriesV2-GPT4-train.txt"
    assert sorted(byte_docs(out, "train") + byte_docs(out, "val")) == sorted(docs[:50])
    assert log["read"] < big.stat().st_size / 10  # two passes (BPE reuse + tokenize) of the first blocks only


def test_paloma_c4_en_is_streamed_from_allenai_paloma(tmp_path, byte_tok, monkeypatch, capsys):
    """--dataset paloma-c4-en: allenai/paloma, config c4_en, split val, every document in val (an eval set)."""
    calls = []

    class FakeDatasets:
        @staticmethod
        def load_dataset(repo, **kwargs):
            calls.append((repo, kwargs))
            return iter([{"text": f"paloma document {i}"} for i in range(30)])
    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    monkeypatch.setattr(prepare, "check_hub_reachable", lambda: None)
    monkeypatch.setattr(prepare, "resolve_revision", lambda repo, revision: "feedbeef")
    out = tmp_path / "eval" / "paloma-c4-en"
    assert run(["--dataset", "paloma-c4-en", "--tokenizer", byte_tok, "--out", out, "--workers", 0, "--quiet"]) == 0
    assert calls[0] == ("allenai/paloma", {"streaming": True, "revision": "feedbeef", "name": "c4_en", "split": "val"})
    meta = prepare.read_meta(out)
    assert meta["split"]["all_val"] and meta["splits"]["val"]["docs"] == 30 and meta["splits"]["train"]["docs"] == 0
    assert meta["sources"][0] == {"dataset": "paloma-c4-en", "hf": "allenai/paloma", "name": "c4_en", "split": "val"}
    # --max_docs stops the stream
    assert run(["--dataset", "paloma-c4-en", "--tokenizer", byte_tok, "--out", out, "--workers", 0, "--quiet",
                "--max_docs", 4]) == 0
    assert prepare.read_meta(out)["splits"]["val"]["docs"] == 4


def test_gated_dataset_error_says_accept_the_terms_and_log_in(tmp_path, capsys, monkeypatch, byte_tok):
    def refused(repo, revision):
        raise RuntimeError("401 Client Error: Unauthorized for url: https://huggingface.co/api/datasets/allenai/paloma")
    monkeypatch.setattr(prepare, "check_hub_reachable", lambda: None)
    monkeypatch.setattr(prepare, "resolve_revision", refused)
    line = one_error_line(capsys, ["--dataset", "paloma-c4-en", "--tokenizer", byte_tok, "--out", tmp_path / "out"])
    assert "allenai/paloma" in line and "gated dataset: accept its terms at https://huggingface.co/datasets/allenai/paloma" in line
    assert "log in" in line and "HF_TOKEN" in line
    # another dataset whose error names a gate gets the same advice; a plain failure does not
    class GatedRepoError(Exception):
        pass

    def gated(repo, revision):
        raise GatedRepoError("Access to dataset x is restricted")
    monkeypatch.setattr(prepare, "resolve_revision", gated)
    assert "accept its terms" in one_error_line(capsys, ["--dataset", "fineweb-edu", "--tokenizer", byte_tok, "--out", tmp_path / "out"])
    monkeypatch.setattr(prepare, "resolve_revision", refused)
    assert "accept its terms" not in one_error_line(capsys, ["--dataset", "c4-val", "--tokenizer", byte_tok, "--out", tmp_path / "out"])


def test_a_bpe_the_text_cannot_fill_is_named_by_its_real_size(tmp_path, capsys):
    """Issue 23: bpe:70000 --dtype uint32 on a small text was named bpe:70000 with 1,345 tokens; records and
    tables show the name, so it is the tokenizer's real size."""
    write_txt(tmp_path / "small.txt", make_docs(40))
    out = tmp_path / "out"
    assert run(["--input", tmp_path / "small.txt", "--tokenizer", "bpe:70000", "--dtype", "uint32", "--out", out,
                "--workers", 0, "--quiet"]) == 0
    meta = prepare.read_meta(out)
    spec = prepare.tokenizer_spec(out)
    real = len(spec["ranks"]) + 1
    assert real < 70000 and meta["tokenizer"]["vocab_size"] == real
    assert meta["tokenizer"]["name"] == spec["name"] == f"bpe:{real}"
    assert f"the tokenizer is bpe:{real}" in capsys.readouterr().err
