"""Tests for eval_bpb.py: the BPB definition against independent oracles, tokenizer independence,
batch-size and world-size invariance, the CLI, and its errors on bad input."""
import hashlib
import json
import math
import os
import pathlib
import resource
import subprocess
import sys

import numpy as np
import pytest
import tiktoken
import torch

import eval_bpb
import prepare
from helpers import ROOT, tiny_config, write_prepared_dir, write_txt
from model import GPT, save_checkpoint

GPT2_SPEC = {"name": "gpt2"}

# Documents with 1-, 2-, 3- and 4-byte UTF-8 characters, paragraph breaks, one a single character.
DOCS = [
    "Once upon a time, a little fox named Zoë found a shiny stone by the river.",
    "Le café était fermé.\n\nAlors nous sommes allés au marché — c'était génial!",
    "数学是科学的语言。 Numbers 12345 and 6789, then 🙂🚀 emoji.",
    "x",
    "Tom said: \"I can't find my hat.\" His mom smiled and said it was on his head all along.",
]


def encode_docs(enc, docs) -> np.ndarray:
    """The stream prepare.py writes: each document preceded by the delimiter (independent of eval_bpb)."""
    delim = enc.encode_single_token("<|endoftext|>")
    out = []
    for doc in docs:
        out += [delim] + enc.encode_ordinary(doc)
    return np.array(out, dtype=np.uint32)


class UniformLogits(torch.nn.Module):
    """All logits equal over V classes: every prediction costs exactly ln V nats."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, idx, targets, reduction="none"):
        # cross-entropy of all-zero logits: logsumexp(0, ..., 0) - 0, without building (B, T, V) zeros
        nats = torch.logsumexp(torch.zeros(self.vocab_size), dim=0)
        return torch.where(targets >= 0, nats, 0.0)


class TargetIdAsLoss(torch.nn.Module):
    """Reports each target's own id as its loss: the nats sum is then the sum of the scored target ids,
    which shows whether each token was scored exactly once (a token missed or scored twice changes it)."""

    def forward(self, idx, targets, reduction="none"):
        return torch.where(targets >= 0, targets.float(), 0.0)


def tiny_gpt(vocab_size, block_size=32, seed=0):
    torch.manual_seed(seed)
    model = GPT(tiny_config(vocab_size=vocab_size, n_layer=2, n_head=2, n_kv_head=2, block_size=block_size,
                            zero_init=True))
    with torch.no_grad():  # untrained output projections may start at zero; make the logits depend on context
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def gpt2(gpt2_available):
    return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def bpe_spec():
    """A small trained BPE: a 300-row lm_head keeps the real-model tests fast on 2 cores."""
    return train_small_bpe("\n".join(DOCS * 20), 300)


@pytest.fixture(scope="module")
def bpe(bpe_spec):
    return prepare.encoding_from_spec(bpe_spec)


# -----------------------------------------------------------------------------
# The definition

def test_uniform_logits_oracle(gpt2):
    """BPB of a uniform model is log2(V) x tokens / bytes, and the bytes are the UTF-8 length of the text."""
    tokens = encode_docs(gpt2, DOCS)
    token_bytes = prepare.token_byte_lengths(gpt2)
    vocab = 50304
    text_tokens = sum(len(gpt2.encode_ordinary(d)) for d in DOCS)
    text_bytes = sum(len(d.encode("utf-8")) for d in DOCS)
    for seq_len in (1, 5, 16, 1000):
        r = eval_bpb.evaluate_bpb(UniformLogits(vocab), tokens, token_bytes, seq_len, 3, "cpu", enc=gpt2)
        assert r["tokens"] == text_tokens
        assert r["bytes"] == text_bytes
        assert r["bpb"] == pytest.approx(math.log2(vocab) * text_tokens / text_bytes, rel=1e-7)
        assert r["loss"] == pytest.approx(math.log(vocab), rel=1e-7)


def test_real_model_with_zero_head_is_uniform(gpt2):
    """The same oracle through model.GPT's own per-token loss: a zero lm_head gives equal logits over
    the model's (padded) vocabulary."""
    tokens = encode_docs(gpt2, DOCS)
    model = tiny_gpt(50304)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    r = eval_bpb.evaluate_bpb(model, tokens, prepare.token_byte_lengths(gpt2), 16, 4, "cpu")
    text_tokens = sum(len(gpt2.encode_ordinary(d)) for d in DOCS)
    assert r["bytes"] == sum(len(d.encode()) for d in DOCS)
    assert r["bpb"] == pytest.approx(math.log2(50304) * text_tokens / r["bytes"], rel=1e-6)


def test_every_token_scored_exactly_once(gpt2):
    tokens = encode_docs(gpt2, DOCS)
    token_bytes = prepare.token_byte_lengths(gpt2)
    targets = tokens[1:].astype(np.int64)
    text_targets = targets[token_bytes[targets] > 0]
    for seq_len in (1, 2, 7, len(tokens) - 1, len(tokens), 4096):  # exact fit, a partial last window, one window
        for batch_size in (1, 2, 5):
            r = eval_bpb.evaluate_bpb(TargetIdAsLoss(), tokens, token_bytes, seq_len, batch_size, "cpu")
            assert r["tokens"] == len(text_targets)
            assert r["loss"] * r["tokens"] == pytest.approx(float(text_targets.sum()), rel=1e-12)


def reference_bpb(model, tokens, token_bytes, seq_len):
    """BPB written out directly: window by window, the model's logits, float64 log-softmax, one target at
    a time, text targets only."""
    tokens = torch.from_numpy(tokens.astype(np.int64))
    nats, n_bytes = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, seq_len):
            x = tokens[start:start + seq_len]
            y = tokens[start + 1:start + seq_len + 1]
            x = x[:len(y)]
            logp = torch.log_softmax(model(x[None]).double()[0], dim=-1)
            for t in range(len(y)):
                if token_bytes[y[t]] > 0:
                    nats -= logp[t, y[t]].item()
                    n_bytes += int(token_bytes[y[t]])
    return nats / (math.log(2) * n_bytes)


def test_matches_direct_computation(bpe):
    """Windows, masking and sums against a slow direct computation on a real model's logits."""
    tokens = encode_docs(bpe, DOCS)
    token_bytes = prepare.token_byte_lengths(bpe)
    model = tiny_gpt(320)
    for seq_len in (8, 32):
        r = eval_bpb.evaluate_bpb(model, tokens, token_bytes, seq_len, 3, "cpu")
        assert r["bpb"] == pytest.approx(reference_bpb(model, tokens, token_bytes, seq_len), rel=1e-6)


def test_batch_size_invariance(bpe):
    tokens = encode_docs(bpe, DOCS * 3)
    token_bytes = prepare.token_byte_lengths(bpe)
    model = tiny_gpt(320)
    results = [eval_bpb.evaluate_bpb(model, tokens, token_bytes, 16, bs, "cpu") for bs in (1, 3, 8, 64)]
    for r in results[1:]:
        assert (r["tokens"], r["bytes"]) == (results[0]["tokens"], results[0]["bytes"])
        assert abs(r["bpb"] - results[0]["bpb"]) < 1e-6


def test_max_tokens_is_a_prefix(gpt2):
    tokens = encode_docs(gpt2, DOCS)
    token_bytes = prepare.token_byte_lengths(gpt2)
    model = UniformLogits(50304)
    cut = eval_bpb.evaluate_bpb(model, tokens, token_bytes, 8, 2, "cpu", max_tokens=40, enc=gpt2)
    prefix = eval_bpb.evaluate_bpb(model, tokens[:40], token_bytes, 8, 2, "cpu", enc=gpt2)
    assert cut == prefix
    assert cut["tokens"] < len(tokens) - len(DOCS)


def test_restores_training_mode(bpe):
    model = tiny_gpt(320).train()
    eval_bpb.evaluate_bpb(model, encode_docs(bpe, DOCS), prepare.token_byte_lengths(bpe), 16, 2, "cpu")
    assert model.training


# -----------------------------------------------------------------------------
# Tokenizer independence and the fingerprint

def test_fingerprint_is_hash_of_scored_text(gpt2):
    tokens = encode_docs(gpt2, DOCS)
    expected = hashlib.sha256(b"\xff".join(d.encode("utf-8") for d in DOCS)).hexdigest()
    assert eval_bpb.eval_fingerprint(tokens, prepare.token_byte_lengths(gpt2), gpt2) == expected
    other = eval_bpb.eval_fingerprint(encode_docs(gpt2, DOCS[:-1]), prepare.token_byte_lengths(gpt2), gpt2)
    assert other != expected


def train_small_bpe(text: str, vocab_size: int) -> dict:
    """The spec of a byte-level BPE trained here (rustbpe) on `text`; its delimiter is id vocab_size - 1."""
    import rustbpe
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator([text], vocab_size - 1, pattern=prepare.SPLIT_PATTERN)
    ranks = {bytes(b): r for b, r in tok.get_mergeable_ranks()}
    return prepare.bpe_spec(f"bpe:{vocab_size}", prepare.SPLIT_PATTERN, ranks)


def test_same_text_two_tokenizers_same_bytes(gpt2, bpe):
    assert bpe.n_vocab == 300
    results = {}
    for enc in (gpt2, bpe):
        tokens = encode_docs(enc, DOCS)
        results[enc.name] = eval_bpb.evaluate_bpb(UniformLogits(enc.n_vocab), tokens,
                                                  prepare.token_byte_lengths(enc), 16, 4, "cpu", enc=enc)
    g, b = results["gpt2"], results["bpe:300"]
    assert g["tokens"] != b["tokens"]  # different tokenizations ...
    assert g["bytes"] == b["bytes"] == sum(len(d.encode()) for d in DOCS)  # ... of the same bytes
    assert g["fingerprint"] == b["fingerprint"]


def test_raw_text_read_as_prepare_reads_it(gpt2, tmp_path):
    txt = write_txt(tmp_path / "a.txt", DOCS[:3])
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("".join(json.dumps({"text": "  " + d + "\n"}) + "\n" for d in DOCS[3:]), encoding="utf-8")
    assert np.array_equal(eval_bpb.load_eval_tokens(txt, gpt2), encode_docs(gpt2, DOCS[:3]))
    assert np.array_equal(eval_bpb.load_eval_tokens(str(tmp_path / "*.*"), gpt2), encode_docs(gpt2, DOCS))
    assert np.array_equal(eval_bpb.load_eval_tokens(str(tmp_path / "*.*"), gpt2, max_tokens=30),
                          encode_docs(gpt2, DOCS)[:30])


def test_raw_text_mojibake_repair_only_for_tinystories_files(gpt2, tmp_path):
    # "É»" is also what the mojibake of "ɻ" looks like: repaired in TinyStories' files, kept as written elsewhere,
    # exactly as prepare.py does, so a raw file and its prepared shards score the same text
    docs = ["Le CAFÉ» est ouvert.", "Second doc."]
    assert np.array_equal(eval_bpb.load_eval_tokens(write_txt(tmp_path / "french.txt", docs), gpt2),
                          encode_docs(gpt2, docs))
    repaired = eval_bpb.load_eval_tokens(write_txt(tmp_path / "tinystories_sample.txt", docs), gpt2)
    assert np.array_equal(repaired, encode_docs(gpt2, ["Le CAF\u027b est ouvert.", "Second doc."]))


def test_retokenize_keeps_text_bytes_and_fingerprint(gpt2, bpe):
    moved = eval_bpb.retokenize(encode_docs(gpt2, DOCS), gpt2, bpe)
    assert np.array_equal(moved, encode_docs(bpe, DOCS))


# -----------------------------------------------------------------------------
# Prepared folders, checkpoints and the command line

def make_checkpoint(path, spec, n_vocab, block_size=32) -> pathlib.Path:
    from model import padded_vocab_size
    model = tiny_gpt(padded_vocab_size(n_vocab), block_size)
    save_checkpoint(path, model, model.config, tokenizer=spec, step=0)
    return path


@pytest.fixture
def gpt2_setup(gpt2, tmp_path):
    data = write_prepared_dir(tmp_path / "data", GPT2_SPEC, val=DOCS * 4)
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", GPT2_SPEC, gpt2.n_vocab)
    return data, ckpt


def run_cli_json(capsys, *args) -> dict:
    assert eval_bpb.main([*args, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_matches_library_and_writes_record(gpt2_setup, gpt2, capsys, tmp_path):
    data, ckpt = gpt2_setup
    out = run_cli_json(capsys, "--ckpt", str(ckpt), "--data", str(data), "--seq_len", "16", "--batch_size", "3")
    from model import load_checkpoint, model_from_checkpoint
    model = model_from_checkpoint(load_checkpoint(ckpt))
    expected = eval_bpb.evaluate_bpb(model, encode_docs(gpt2, DOCS * 4), prepare.token_byte_lengths(gpt2),
                                     16, 5, "cpu", enc=gpt2)
    assert out["fingerprint"] == expected["fingerprint"]
    numbers = [k for k in eval_bpb.RESULT_KEYS if k != "fingerprint"]
    assert {k: out[k] for k in numbers} == pytest.approx({k: expected[k] for k in numbers}, rel=1e-6)
    assert out["fingerprint"] == expected["fingerprint"]

    record = tmp_path / "record"
    record.mkdir()
    (record / "results.json").write_text(json.dumps({"name": "run", "eval": {"other": {"bpb": 1.0}}}))
    assert eval_bpb.main(["--ckpt", str(ckpt), "--data", str(data), "--seq_len", "16", "--device", "cpu",
                          "--record", str(record), "--eval_id", "tiny-val"]) == 0
    saved = json.loads((record / "results.json").read_text())
    assert saved["name"] == "run" and saved["eval"]["other"] == {"bpb": 1.0}  # the rest of the file kept
    assert saved["eval"]["tiny-val"] == {k: out[k] for k in eval_bpb.RESULT_KEYS}
    assert sorted(p.name for p in record.iterdir()) == ["results.json"]  # no temp file left behind


def test_cli_on_prepare_output(gpt2, bpe_spec, tmp_path, capsys, monkeypatch):
    """A folder written by prepare.py itself: the bytes scored are the val bytes its meta.json counted."""
    txt = write_txt(tmp_path / "stories.txt", DOCS)
    data = tmp_path / "eval" / "c4-en-val"
    assert prepare.main(["--input", str(txt), "--tokenizer", "gpt2", "--out", str(data), "--all_val",
                         "--workers", "0", "--quiet"]) == 0
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", GPT2_SPEC, gpt2.n_vocab)
    out = run_cli_json(capsys, "--ckpt", str(ckpt), "--data", str(data), "--seq_len", "16")
    meta = prepare.read_meta(data)
    assert out["bytes"] == meta["splits"]["val"]["bytes"] == sum(len(d.encode()) for d in DOCS)
    assert out["tokens"] == meta["splits"]["val"]["tokens"] - meta["splits"]["val"]["docs"]
    assert out["eval_id"] == "c4-en-val"

    # The same text through a BPE checkpoint: the gpt2 shards re-tokenized, on request for a folder,
    # automatically for an official eval set by name. Same bytes, same fingerprint.
    bpe_ckpt = make_checkpoint(tmp_path / "bpe.pt", bpe_spec, 300)
    moved = run_cli_json(capsys, "--ckpt", str(bpe_ckpt), "--data", str(data), "--seq_len", "16", "--retokenize")
    assert (moved["bytes"], moved["fingerprint"]) == (out["bytes"], out["fingerprint"])
    assert moved["tokens"] != out["tokens"]
    monkeypatch.setattr(eval_bpb, "EVAL_DIR", tmp_path / "eval")
    by_name = run_cli_json(capsys, "--ckpt", str(bpe_ckpt), "--data", "c4-en-val", "--seq_len", "16")
    assert by_name == {**moved, "seconds": by_name["seconds"], "tokens_per_second": by_name["tokens_per_second"]}


def test_two_gloo_processes_match_one(bpe, bpe_spec, tmp_path, capsys):
    """torchrun with 2 CPU (gloo) processes gives the same numbers as one process."""
    data = write_prepared_dir(tmp_path / "data", bpe_spec, val=DOCS * 4)
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", bpe_spec, bpe.n_vocab)
    args = ["--ckpt", str(ckpt), "--data", str(data), "--seq_len", "8", "--batch_size", "2"]
    single = run_cli_json(capsys, *args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "eval_bpb.py"), *args, "--json", "--device", "cpu"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone prints
    double = json.loads(lines[0])
    assert double["world_size"] == 2
    assert (double["tokens"], double["bytes"], double["fingerprint"]) == \
        (single["tokens"], single["bytes"], single["fingerprint"])
    assert abs(double["bpb"] - single["bpb"]) < 1e-6


# -----------------------------------------------------------------------------
# Bad input: one clear line, exit 2

def cli_error(capsys, *args, device="cpu") -> str:
    assert eval_bpb.main([*args, "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_tokenizer_mismatch_between_checkpoint_and_shards(gpt2_setup, bpe, bpe_spec, tmp_path, capsys):
    data, _ = gpt2_setup
    spec = bpe_spec
    bpe_ckpt = make_checkpoint(tmp_path / "bpe.pt", spec, 300)
    err = cli_error(capsys, "--ckpt", str(bpe_ckpt), "--data", str(data))
    assert "tokenizer mismatch" in err and "bpe:300" in err and "gpt2" in err and str(data) in err

    # same name, other merges: a BPE trained on other text
    other = write_prepared_dir(tmp_path / "other", spec, val=DOCS)
    spec2 = train_small_bpe("zebra quartz jumps; " * 50 + "\n".join(DOCS), 300)
    assert spec2["ranks"] != spec["ranks"]
    err = cli_error(capsys, "--ckpt", str(make_checkpoint(tmp_path / "bpe2.pt", spec2, 300)), "--data", str(other))
    assert "tokenizer mismatch" in err and "ranks differ" in err


def test_model_vocab_smaller_than_tokenizer(gpt2):
    model = tiny_gpt(1024)
    with pytest.raises(ValueError, match="vocab_size is 1024"):
        eval_bpb.evaluate_bpb(model, encode_docs(gpt2, DOCS), prepare.token_byte_lengths(gpt2), 16, 2, "cpu")
    with pytest.raises(ValueError, match="outside the tokenizer's 300 tokens"):
        eval_bpb.evaluate_bpb(model, encode_docs(gpt2, DOCS), np.ones(300), 16, 2, "cpu")


def test_empty_eval_set(gpt2_setup, gpt2, tmp_path, capsys):
    _, ckpt = gpt2_setup
    with pytest.raises(ValueError, match="1 token"):
        eval_bpb.evaluate_bpb(UniformLogits(50304), np.array([50256]), prepare.token_byte_lengths(gpt2), 8, 2, "cpu")
    with pytest.raises(ValueError, match="no text tokens"):
        eval_bpb.evaluate_bpb(UniformLogits(50304), np.array([50256] * 5), prepare.token_byte_lengths(gpt2), 8, 2, "cpu")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    err = cli_error(capsys, "--ckpt", str(ckpt), "--data", str(empty))
    assert "empty" in err and str(empty) in err


def test_shard_failing_validation(gpt2_setup, capsys):
    data, ckpt = gpt2_setup
    shard = data / "val_000000.bin"
    raw = bytearray(shard.read_bytes())
    raw[:4] = (12345).to_bytes(4, "little")  # wrong magic
    shard.write_bytes(bytes(raw))
    err = cli_error(capsys, "--ckpt", str(ckpt), "--data", str(data))
    assert str(shard) in err and "magic" in err
    shard.write_bytes(bytes(raw[:4]) + bytes(raw[4:-2]))  # truncated: size disagrees with the header
    raw[:4] = prepare.MAGIC_U16.to_bytes(4, "little")
    shard.write_bytes(bytes(raw[:-2]))
    err = cli_error(capsys, "--ckpt", str(ckpt), "--data", str(data))
    assert str(shard) in err and "truncated" in err


def test_other_bad_inputs(gpt2_setup, tmp_path, capsys, monkeypatch):
    data, ckpt = gpt2_setup
    monkeypatch.setattr(eval_bpb, "EVAL_DIR", tmp_path / "no_eval_sets")
    err = cli_error(capsys, "--ckpt", str(ckpt), "--data", "c4-en-val")
    assert "c4-en-val" in err and "prepare.py" in err
    err = cli_error(capsys, "--ckpt", str(ckpt), "--data", "paloma-c4-en")
    assert "prepare.py --dataset paloma-c4-en --out data/eval/paloma-c4-en" in err and "accept its terms" in err
    err = cli_error(capsys, "--ckpt", str(ckpt), "--data", str(tmp_path / "nothing_*.txt"))
    assert "nothing_*.txt" in err
    err = cli_error(capsys, "--ckpt", str(ckpt), "--data", str(data), "--seq_len", "64")
    assert "block_size 32" in err
    err = cli_error(capsys, "--ckpt", str(ckpt), "--data", str(data), "--batch_size", "0")
    assert "--batch_size" in err
    err = cli_error(capsys, "--ckpt", str(ckpt), "--data", str(data), "--seq_len", "1k")
    assert "--seq_len" in err
    err = cli_error(capsys, "--ckpt", str(tmp_path / "missing.pt"), "--data", str(data))
    assert "missing.pt" in err
    err = cli_error(capsys, "--ckpt", str(ckpt), "--data", str(data), "--record", str(tmp_path))
    assert "results.json" in err
    # a device that is not a name, or not on this machine: said in one line before any work
    for device in ("gpu0", "cuda:99"):
        err = cli_error(capsys, "--ckpt", str(ckpt), "--data", str(data), device=device)
        assert err.startswith("error: eval_bpb.py: --device") and device in err


def test_record_that_is_not_json_a_reader_can_take_is_one_line(gpt2_setup, tmp_path, capsys):
    """Issue 13, item 13: a results.json with a 5000-digit number or nested 100,000 deep is refused in one
    line naming the file, before any evaluation (leaderboard.read_record, the one reader)."""
    data, ckpt = gpt2_setup
    record = tmp_path / "record"
    record.mkdir()
    for text in ('{"name": "run", "seed": 1' + "0" * 5000 + "}", '{"name": ' + "[" * 100_000 + "]" * 100_000 + "}"):
        (record / "results.json").write_text(text)
        err = cli_error(capsys, "--ckpt", str(ckpt), "--data", str(data), "--record", str(record))
        assert f"{record / 'results.json'}: not a readable record" in err
        assert (record / "results.json").read_text() == text


@pytest.mark.parametrize("eval_id", ["tiny val", "x\n<!-- leaderboard:end -->", "[x](javascript:alert(1))"])
def test_eval_id_must_be_a_plain_name(gpt2_setup, tmp_path, capsys, eval_id):
    """Issue 13, item 3: the eval id titles a leaderboard table, so the record takes only what the leaderboard
    accepts; refused before the evaluation, the record untouched."""
    data, ckpt = gpt2_setup
    record = tmp_path / "record"
    record.mkdir()
    (record / "results.json").write_text('{"name": "run"}')
    err = cli_error(capsys, "--ckpt", str(ckpt), "--data", str(data), "--record", str(record), "--eval_id", eval_id)
    assert "--eval_id" in err and "not a plain name" in err
    assert (record / "results.json").read_text() == '{"name": "run"}'


def test_paloma_c4_en_is_the_primary_eval_of_fineweb_edu_and_open(gpt2_setup, tmp_path, capsys, monkeypatch):
    """--data paloma-c4-en (data/eval/paloma-c4-en) records the eval id the fineweb-edu and open tables rank by;
    allenai/c4's validation set (c4-en-val) is kept, as a secondary eval."""
    import shutil
    import leaderboard
    data, ckpt = gpt2_setup
    shutil.copytree(data, tmp_path / "eval" / "paloma-c4-en")
    shutil.copytree(data, tmp_path / "eval" / "c4-en-val")
    monkeypatch.setattr(eval_bpb, "EVAL_DIR", tmp_path / "eval")
    record = tmp_path / "record"
    record.mkdir()
    (record / "results.json").write_text(json.dumps({"name": "run", "eval": {}}))
    for name in ("paloma-c4-en", "c4-en-val"):
        assert eval_bpb.main(["--ckpt", str(ckpt), "--data", name, "--seq_len", "16", "--device", "cpu",
                              "--record", str(record)]) == 0
    evals = json.loads((record / "results.json").read_text())["eval"]
    assert set(evals) == {"paloma-c4-en", "c4-en-val"}
    for track in ("fineweb-edu", "open"):
        assert [e[0] for e in leaderboard.primary_evals(track, evals)] == ["paloma-c4-en"]


# -----------------------------------------------------------------------------
# Issue 23, item 7: the context a text is scored in is recorded; a config edited to a huge context is refused
# before anything is allocated

def with_block_size(ckpt_path, out_path, block_size) -> pathlib.Path:
    """A copy of a checkpoint whose config says another block_size (the weights unchanged)."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["config"]["block_size"] = block_size
    torch.save(ckpt, out_path)
    return out_path


def test_the_context_scored_in_is_recorded(gpt2_setup, gpt2, tmp_path, capsys):
    data, ckpt = gpt2_setup
    n_tokens = len(encode_docs(gpt2, DOCS * 4))  # the val stream, counted independently
    assert n_tokens - 1 > 32
    record = tmp_path / "record"
    record.mkdir()
    (record / "results.json").write_text(json.dumps({"name": "run", "eval": {}}))
    # a RoPE model copied with block_size 10^9: the whole text is one window, scored at a context of 10^9
    huge = with_block_size(ckpt, tmp_path / "huge.pt", 10 ** 9)
    for path, seq_len, eval_id in ((ckpt, [], "at-block-size"), (ckpt, ["--seq_len", "16"], "at-16"),
                                   (huge, [], "huge-copy")):
        assert eval_bpb.main(["--ckpt", str(path), "--data", str(data), "--device", "cpu", *seq_len,
                              "--record", str(record), "--eval_id", eval_id]) == 0
    evals = json.loads((record / "results.json").read_text())["eval"]
    assert {k: e["seq_len"] for k, e in evals.items()} == {"at-block-size": 32, "at-16": 16, "huge-copy": 10 ** 9}
    assert len({e["fingerprint"] for e in evals.values()}) == 1  # one text ...
    assert len({e["bpb"] for e in evals.values()}) == 3          # ... three BPBs: the context is part of the score


def test_a_learned_position_model_edited_to_a_huge_context_allocates_nothing(gpt2_setup, tmp_path):
    """rope=False: block_size rows of learned positions. A copy whose config says 10^9 would take 10^9 x n_embd
    floats (128 GB here) before the weights were even compared: refused in one line, under a 4 GB memory limit."""
    data, _ = gpt2_setup
    from model import padded_vocab_size
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=padded_vocab_size(50257), n_layer=1, n_head=2, n_kv_head=2, block_size=32,
                            rope=False))
    ckpt = tmp_path / "learned.pt"
    save_checkpoint(ckpt, model, model.config, tokenizer=GPT2_SPEC, step=0)
    huge = with_block_size(ckpt, tmp_path / "learned_huge.pt", 10 ** 9)
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt\nOnce upon a time\n")
    commands = [[str(ROOT / "eval_bpb.py"), "--ckpt", str(huge), "--data", str(data), "--device", "cpu"],
                [str(ROOT / "judge.py"), f"--ckpt={huge}", f"--prompts={prompts}", "--samples=1", "--device=cpu",
                 f"--cache_dir={tmp_path / 'cache'}", f"--generate_only={tmp_path / 'out.csv'}"]]
    for command in commands:
        out = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300, preexec_fn=limit)
        err = out.stderr.strip().splitlines()
        assert out.returncode == 2 and err[-1].startswith("error: ") and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert "transformer.wpe.weight (32, 32) vs (1000000000, 32)" in err[-1]
    assert eval_bpb.main(["--ckpt", str(ckpt), "--data", str(data), "--device", "cpu"]) == 0  # the true one scores
