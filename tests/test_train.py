"""Tests for train.py on CPU: a tiny model on synthetic shards learns, resume is exact, 2 gloo processes equal
1 process with grad_accum=2, budgets stop where they should, and the record is complete and consistent."""
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import pathlib
import random
import re
import shutil
import socket
import subprocess
import sys
import traceback
import types

import numpy as np
import pytest
import torch


import common
import flops
import model
import prepare
import train
from helpers import ROOT, write_prepared_dir

DELIM = 256  # byte-level tokenizer: ids 0..255 are bytes, 256 is <|endoftext|>
TINY = ["--preset=tiny", "--n_layer=2", "--n_embd=32", "--n_head=2", "--seq_len=32", "--batch_size=4", "--log_every=1",
        "--val_tokens=2048", "--warmup_steps=2", "--seed=7", "--compile=0"]  # test_compiled_run_* compiles

# leaderboard.py's record format, field by field
SCHEMA = {
    "schema": None, "name": None, "track": None, "date": None, "description": None, "sweep": None,
    "author": {"name", "affiliation", "url"},
    "code": {"sha256", "git_commit"},
    "data": {"dataset", "tokenizer", "vocab_size", "fingerprint"},
    "model": None,
    "params": {"counted", "unique", "embedding", "weight_class"},
    "training": {"steps", "tokens", "batch_tokens", "seq_len", "seed", "world_size", "stopped_by", "passes",
                 "planned_passes", "best_step", "best_val_bpb"},
    "compute": {"flops_convention", "flops_per_token", "model_flops", "hardware_flops", "mfu", "device",
                "device_count", "peak_flops_per_device", "train_seconds"},
    "eval": None, "target": None, "judge": None,
    "software": {"python", "torch", "cuda", "triton"},
}


# -----------------------------------------------------------------------------
# Synthetic data: short template stories, byte-level tokens, each document after the delimiter


def synthetic_stories(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names, things = ["Tom", "Mia", "Ben", "Lily", "Sam"], ["ball", "cat", "kite", "cake", "boat"]
    colors = ["red", "blue", "green", "big", "little"]
    docs = []
    for _ in range(n):
        name, thing, color = rng.choice(names), rng.choice(things), rng.choice(colors)
        docs.append(f"{name} had a {color} {thing}. {name} loved the {thing}. The {thing} was {color}. "
                    f"One day {name} lost the {thing} and was sad." * rng.randint(1, 2))
    return docs


def write_dataset(out: pathlib.Path, train_docs, val_docs, shard_tokens: int) -> pathlib.Path:
    return write_prepared_dir(out, train=train_docs, val=val_docs, shard_tokens=shard_tokens, dataset="synthetic-stories")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    # several train shards, so the loader crosses shard boundaries; shards start with a delimiter
    return write_dataset(tmp_path_factory.mktemp("data"), synthetic_stories(600, 0), synthetic_stories(40, 1),
                         shard_tokens=40_000)


def checkpoint_files(folder: pathlib.Path) -> list[str]:
    """What a checkpoint folder holds, without its lock file (common.folder_lock leaves LOCK in place)."""
    return sorted(p.name for p in folder.iterdir() if p.name != common.LOCK_NAME)


def run_train(tmp: pathlib.Path, data_dir: pathlib.Path, *args: str) -> dict:
    argv = [f"--data_dir={data_dir}", f"--out_dir={tmp / 'record'}", f"--ckpt_dir={tmp / 'ckpt'}", *TINY, *args]
    return train.train(train.parse_args(argv))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, data_dir) -> tuple[pathlib.Path, dict]:
    """40 steps with a checkpoint every 20: the run that learns, the record, and the resume reference."""
    tmp = tmp_path_factory.mktemp("straight")
    return tmp, run_train(tmp, data_dir, "--max_steps=40", "--val_every=20", "--checkpoint_every=20",
                          "--name=straight", "--description=tiny test run", "--sweep=tiny-sweep")


# -----------------------------------------------------------------------------
# Command line


def test_parse_args_types_overrides_and_errors():
    hp = train.parse_args(["--n_layer=3", "--matrix_lr=0.5", "--resume=true", "--max_tokens=1e6", "--description=x=y"])
    assert (hp.model["n_layer"], hp.matrix_lr, hp.resume, hp.max_tokens, hp.description) == (3, 0.5, True, 1_000_000, "x=y")
    assert hp.preset == "small" and hp.track == "tinystories" and hp.data_dir == "data/tinystories"
    for bad in (["--n_layer=2.5"], ["--n_layr=2"], ["--compile=maybe"], ["n_layer=2"], ["--max_seconds=nan"],
                ["--batch_size=0"], ["--max_steps=0"], ["--seed=1e30"], ["--mlp=swiglu2", "--data_dir=x"]):
        with pytest.raises(ValueError):
            train.parse_args(bad)


def test_help_prints_the_block_with_every_setting_the_issue_names(capsys):
    train.main(["--help"])
    out = capsys.readouterr().out
    assert "class Hyperparameters" in out
    for name in ("data_dir out_dir track name device model seq_len batch_size grad_accum "
                 "max_steps max_tokens max_flops max_seconds target_bpb val_every val_tokens batch_tokens "
                 "checkpoint_every ckpt_dir resume seed compile kernels wandb preset").split():
        assert re.search(rf"^    {name}: \w+ = ", out, re.M), name
    assert all(name in out for name in ("n_layer", "n_head", "n_kv_head", "n_embd", "mlp", "value_embeds"))


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, data_dir):
    cases = [(["--n_layer=abc"], "n_layer"),
             ([f"--data_dir={tmp_path / 'nowhere'}"], "nowhere"),
             ([f"--data_dir={data_dir}", f"--ckpt_dir={tmp_path / 'empty'}", "--resume=1", *TINY], "empty"),
             ([f"--data_dir={data_dir}", "--preset=huge", *TINY[1:]], "huge")]
    for argv, named in cases:
        code = train.main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: ") and "\n" not in err and named in err, err


def test_corrupt_shard_is_named(tmp_path, capsys, data_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in data_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    shard = broken / "train_000001.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    code = train.main([f"--data_dir={broken}", f"--out_dir={tmp_path / 'r'}", f"--ckpt_dir={tmp_path / 'c'}",
                       "--max_steps=200", *TINY])
    assert code == 2 and "train_000001.bin" in capsys.readouterr().err


def test_model_config_from_preset_overrides_and_kernel_switch():
    hp = train.parse_args(["--preset=tiny", "--n_layer=3", "--n_head=2", "--kernels=0", "--mlp=swiglu"])
    config = train.model_config(hp, n_vocab=300, delimiter=0)
    assert (config.n_layer, config.n_head, config.n_kv_head, config.mlp) == (3, 2, 2, "swiglu")
    assert config.vocab_size % 64 == 0 and config.vocab_size >= 300  # padded, never smaller than the tokenizer
    assert "use_kernels" not in dataclasses.asdict(config)  # a runtime setting, not saved with the model
    assert not train.GPT(config, use_kernels=hp.kernels).use_kernels


@pytest.mark.parametrize("flags", [["--preset=small", "--n_head=16"], ["--preset=tiny", "--mlp=swiglu", "--n_layer=3"],
                                   ["--preset=medium", "--n_kv_head=10", "--tie_embeddings=1", "--value_embeds=2"]])
def test_one_config_builder_for_train_flops_and_model(flags):
    """train.py, flops.py and model.build_config give the same config for the same flags."""
    from_train = train.model_config(train.parse_args([*flags, "--seq_len=512"]), n_vocab=8192, delimiter=0)
    from_flops = flops.config_from_args(flops.make_parser().parse_args([*flags, "--vocab_size=8192", "--block_size=512"]))
    overrides = dict(f[2:].split("=") for f in flags[1:])
    types = {f.name: f.type for f in dataclasses.fields(model.GPTConfig)}
    typed = {k: common.FIELD_PARSERS[types[k]](v) for k, v in overrides.items()}
    from_model = model.build_config(flags[0].split("=")[1], 8192, 512, **typed)
    assert from_train == from_flops == from_model


def test_global_batch_and_indivisible_batch_tokens():
    hp = train.parse_args(["--batch_size=4", "--seq_len=32", "--batch_tokens=1024"])
    assert train.global_batch(hp, 1) == (8, 1024)
    assert train.global_batch(hp, 2) == (4, 1024)  # same global batch on 2 processes: half the accumulation
    assert train.global_batch(train.parse_args(["--batch_size=4", "--seq_len=32", "--grad_accum=3"]), 2) == (3, 768)
    with pytest.raises(ValueError, match="not a multiple"):
        train.global_batch(hp, 3)
    with pytest.raises(ValueError, match="contradicts"):
        train.global_batch(train.parse_args(["--batch_size=4", "--seq_len=32", "--batch_tokens=1024",
                                             "--grad_accum=2"]), 1)


# -----------------------------------------------------------------------------
# Muon and the schedule


def test_newton_schulz_is_the_quintic_applied_to_singular_values():
    # independent oracle: X = U S V^T, so each iteration maps X to U p(S) V^T with p(s) = a s + b s^3 + c s^5
    torch.manual_seed(0)
    for shape in [(16, 48), (48, 16)]:
        G = torch.randn(*shape, dtype=torch.float64)
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        s = S / S.square().sum().sqrt()
        for _ in range(5):
            s = 3.4445 * s - 4.7750 * s ** 3 + 2.0315 * s ** 5
        expected = U @ torch.diag(s) @ Vh
        got = train.zeropower_via_newtonschulz5(G.float())
        assert got.shape == G.shape
        torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)
        assert 0.6 < float(s.min()) and float(s.max()) < 1.25  # orthogonal-ish, as Muon needs


def test_muon_step_by_hand():
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.randn(8, 4))
    start = p.detach().clone()
    grads = [torch.randn(8, 4), torch.randn(8, 4)]
    opt = train.Muon([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    buf = torch.zeros(8, 4)
    expected = start.clone()
    for g in grads:
        p.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + 0.1 * g                # momentum as lerp: buf + (1 - m) (g - buf)
        nesterov = 0.9 * buf + 0.1 * g
        expected = expected * (1 - 0.1 * 0.01) - 0.1 * math.sqrt(8 / 4) * train.zeropower_via_newtonschulz5(nesterov)
    torch.testing.assert_close(p.detach(), expected, atol=1e-5, rtol=1e-5)


def test_batched_muon_equals_muon_matrix_by_matrix():
    """Same-shape matrices stacked and orthogonalised together give each matrix the update it gets alone."""
    torch.manual_seed(2)
    shapes = [(16, 8)] * 3 + [(8, 24)] * 2 + [(12, 12)]
    params = [torch.nn.Parameter(torch.randn(*shape)) for shape in shapes]
    start = [p.detach().clone() for p in params]
    opt = train.Muon(params, lr=0.05, momentum=0.9, weight_decay=0.1)
    bufs = [torch.zeros_like(p) for p in params]
    expected = [s.clone() for s in start]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            bufs[i] = bufs[i].lerp(g, 0.1)
            update = train.zeropower_via_newtonschulz5(g.lerp(bufs[i], 0.9))
            rows, cols = g.shape
            expected[i] = expected[i] * (1 - 0.05 * 0.1) - 0.05 * max(1, rows / cols) ** 0.5 * update
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, atol=1e-5, rtol=1e-5)
    assert len(opt.param_groups) == 3  # one batched group per shape


def test_muon_op_count_is_per_shape_not_per_matrix():
    """The figure the README quotes: aten ops of one Muon step, for 72 matrices in 4 shapes (124M-like)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOps(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountOps.count += 1
            return func(*args, **(kwargs or {}))

    shapes = [(64, 16)] * 24 + [(16, 16)] * 24 + [(64, 16)] * 12 + [(16, 64)] * 12
    params = [torch.nn.Parameter(torch.randn(*shape)) for shape in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = train.Muon(params)
    opt.step()  # state allocated
    with CountOps():
        opt.step()
    # matrix by matrix this step took 3,890 aten ops (counted the same way); stacked, 406, half of them views.
    # Compiled (train.py's default), each shape's Newton-Schulz is one graph.
    assert CountOps.count < 450, CountOps.count


MUON_DDP = """
import os, torch
import common, train
threads = lambda: len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 0
before = threads()
rank, world, device = common.setup_distributed("cpu")
torch.manual_seed(0)
params = [torch.nn.Parameter(torch.randn(*s)) for s in [(8, 4)] * 3 + [(4, 6)] * 2]
grads = [[torch.randn(len(params), 8, 4)] for _ in range(4)]
opt = train.Muon(params, lr=0.1, momentum=0.9, rank=rank, world_size=world)
for step in range(4):
    torch.manual_seed(100 + step)
    full = [torch.randn_like(p) for p in params]
    for p, g in zip(params, full):  # each rank holds half of the batch's gradient: their mean is `full`
        p.grad = g * (2 * rank) / max(1, world - 1) if world > 1 else g.clone()
    opt.step()
state = opt.state_dict()
common.destroy_distributed()
if rank == 0:  # the group's threads are gone before the interpreter shuts down (common.setup_distributed)
    torch.save({{"params": [p.detach() for p in params], "state": state, "threads": (before, threads())}}, {out!r})
"""


@pytest.mark.parametrize("world", [1, 2])
def test_distributed_muon_equals_one_process(tmp_path, world):
    outs = {}
    for w in sorted({1, world}):
        out = tmp_path / f"muon_{w}.pt"
        script = tmp_path / f"muon_{w}.py"
        script.write_text(MUON_DDP.format(out=str(out)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={w}", str(script)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)))
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs[w] = torch.load(out, weights_only=True)
    for a, b in zip(outs[1]["params"], outs[world]["params"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    before, after = outs[world]["threads"]
    assert after == before, f"{after - before} threads of the process group outlive destroy_distributed"
    # the saved momentum is every matrix's, unpadded, whatever the world size: a checkpoint resumes anywhere
    for key, value in outs[1]["state"]["state"].items():
        torch.testing.assert_close(value["momentum_buffer"], outs[world]["state"]["state"][key]["momentum_buffer"],
                                   atol=1e-5, rtol=1e-5)


def test_parameters_split_between_muon_and_adamw():
    hp = train.parse_args(["--preset=tiny", "--seq_len=16"])
    model = train.GPT(train.model_config(hp, 257, delimiter=256))
    groups = train.split_parameters(model)
    assert model.lm_head.weight is model.transformer.wte.weight  # the tiny preset ties them
    assert any(p is model.lm_head.weight for p in groups["head"]) and not groups["embed"]
    assert all(p.ndim == 2 for p in groups["matrix"]) and all(p.ndim < 2 for p in groups["scalar"])
    n = sum(p.numel() for g in groups.values() for p in g)
    assert n == sum(p.numel() for p in model.parameters())  # each unique parameter exactly once


def test_warmup_stable_decay():
    hp = train.parse_args(["--warmup_steps=4", "--cooldown_frac=0.5", "--final_lr_frac=0.1", "--max_steps=100"])
    assert train.lr_multiplier(0, 0.0, hp) == pytest.approx(0.25)
    assert train.lr_multiplier(3, 0.03, hp) == pytest.approx(1.0)
    assert train.lr_multiplier(30, 0.3, hp) == 1.0
    assert train.lr_multiplier(75, 0.75, hp) == pytest.approx(0.1 + 0.9 * 0.5)
    assert train.lr_multiplier(100, 1.0, hp) == pytest.approx(0.1)
    assert train.schedule_progress(10, 100, 5.0, hp) == pytest.approx(0.1)
    timed = train.parse_args(["--max_seconds=20"])
    assert train.schedule_progress(10, 100, 5.0, timed) == pytest.approx(0.25)  # the budget spent furthest


def test_planned_steps_never_exceed_a_budget():
    hp = train.parse_args(["--max_steps=50", "--max_tokens=1000", "--max_flops=0"])
    assert train.planned_steps(hp, 256, 10**6) == (3, "max_tokens")
    hp = train.parse_args(["--max_steps=50", "--max_flops=5.5e6"])
    assert train.planned_steps(hp, 256, 10**6) == (5, "max_flops")
    assert train.planned_steps(train.parse_args(["--max_steps=0", "--max_seconds=9"]), 256, 1) == (None, None)
    with pytest.raises(ValueError, match="allows no step"):
        train.planned_steps(train.parse_args(["--max_tokens=100"]), 256, 1)


# -----------------------------------------------------------------------------
# The data loader


def test_next_window_start():
    starts = np.array([0, 10, 40, 45, 90])
    assert train.next_window_start(starts, 0, 50) == 45   # the last document start in the second half
    assert train.next_window_start(starts, 45, 50) == 90  # 90 is exactly the window's end
    assert train.next_window_start(np.array([0, 10]), 0, 50) == 50  # a long document continues
    # walking a stream: windows never leave a gap (every token is trained on) and repeat under half a window
    rng = np.random.default_rng(0)
    starts = np.cumsum(rng.integers(1, 80, size=400))
    start = int(starts[0])
    for _ in range(100):
        following = train.next_window_start(starts, start, 64)
        assert start + 32 < following <= start + 64
        assert following == start + 64 or following in set(starts.tolist())
        start = following


def loader_batches(data_dir, n_steps, seq_len=32, **kw):
    loader = train.DataLoader(prepare.list_shards(data_dir, "train"), seq_len, 3, delimiter=DELIM, **kw)
    try:
        batches = [loader.next_batch() for _ in range(n_steps)]
        return batches, loader.position
    finally:
        loader.close()


def test_loader_splits_ranks_like_micro_steps(data_dir):
    one, _ = loader_batches(data_dir, 30, grad_accum=2)
    rank0, _ = loader_batches(data_dir, 30, grad_accum=1, rank=0, world_size=2)
    rank1, _ = loader_batches(data_dir, 30, grad_accum=1, rank=1, world_size=2)
    for b1, b0, b_1 in zip(one, rank0, rank1):
        assert torch.equal(b1[0], b0[0]) and torch.equal(b1[1], b_1[0])  # 2 ranks = 2 micro-steps of 1 process
    assert not torch.equal(rank0[0], rank1[0])  # each rank its own sequences


def test_loader_windows_start_at_document_starts(data_dir):
    # the synthetic documents are at most ~220 bytes: shorter than half of a 512-token window
    batches, _ = loader_batches(data_dir, 5, seq_len=512, grad_accum=2)
    rows = torch.cat([b.reshape(-1, 513) for b in batches])
    assert bool((rows[:, 0] == DELIM).all())
    stream = np.concatenate([prepare.open_shard(f) for f in prepare.list_shards(data_dir, "train")])
    assert rows[0].tolist() == stream[:513].tolist()  # the first window is the stream's start
    delims = np.flatnonzero(stream[:513] == DELIM)
    second = int(delims[delims > 256].max())  # the last document start in the second half of the first window
    assert rows[1].tolist() == stream[second:second + 513].tolist()


def test_loader_position_resumes_exactly(data_dir):
    full, _ = loader_batches(data_dir, 12, grad_accum=2)
    first, position = loader_batches(data_dir, 5, grad_accum=2)
    rest, _ = loader_batches(data_dir, 7, grad_accum=2, position=position)
    assert all(torch.equal(a, b) for a, b in zip(full, first + rest))


def test_later_epochs_read_every_window_once_in_a_new_order_and_resume_exactly(data_dir):
    files = prepare.list_shards(data_dir, "train")
    per_epoch = sum(len(train.shard_windows(prepare.open_shard(f), DELIM, 32)) for f in files)
    loader = train.DataLoader(files, 32, 1, 1, DELIM)
    try:
        stream = loader.windows({"shard": 0, "start": -1, "epoch": 0})
        epochs = [[next(stream)[1:] for _ in range(per_epoch)] for _ in range(3)]
    finally:
        loader.close()
    starts = [[start for start, _ in epoch] for epoch in epochs]
    assert [after["epoch"] for _, after in epochs[1]][-1] == 2  # the last window of epoch 1 leads to epoch 2
    assert sorted(starts[0]) == sorted(starts[1]) == sorted(starts[2])
    assert starts[0] != starts[1] and starts[1] != starts[2]
    assert starts[0] == [s for f in files for s in train.shard_windows(prepare.open_shard(f), DELIM, 32)]
    assert train.epoch_order(starts[0], 0, 3, reshuffle=False) == starts[0]  # --reshuffle=0: every epoch alike
    # a position saved in the middle of a shuffled epoch resumes with the same windows
    full, _ = loader_batches(data_dir, 2 * per_epoch // 3 + 10, grad_accum=1)
    first, position = loader_batches(data_dir, per_epoch // 3 + 4, grad_accum=1)
    assert position["epoch"] >= 1
    rest, _ = loader_batches(data_dir, len(full) - len(first), grad_accum=1, position=position)
    assert all(torch.equal(a, b) for a, b in zip(full, first + rest))


def test_loader_crosses_shards_and_wraps(data_dir):
    batches, position = loader_batches(data_dir, 120, grad_accum=4)
    assert position["shard"] > 0 or position["epoch"] > 0
    assert all(int(b.max()) <= DELIM for b in batches)


# -----------------------------------------------------------------------------
# Training runs


def read_log_losses(log: pathlib.Path) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(r"^step \d+(?:/\d+)? loss (\S+)", log.read_text(), re.M)]


def test_tiny_model_learns(straight_run):
    _, result = straight_run
    vals = result["validations"]
    assert [v["step"] for v in vals] == [0, 20, 40]
    assert vals[0]["bpb"] > 7.0  # about log2(320) at initialisation
    assert vals[-1]["bpb"] < 0.6 * vals[0]["bpb"] and vals[-1]["bpb"] < vals[1]["bpb"]
    assert np.mean(result["losses"][-5:]) < np.mean(result["losses"][:5]) - 1.0


def test_record_has_every_field_and_consistent_numbers(straight_run, data_dir):
    tmp, result = straight_run
    record = json.loads((tmp / "record" / "results.json").read_text())
    assert set(record) == set(SCHEMA)
    for key, sub in SCHEMA.items():
        if sub:
            assert sub <= set(record[key]), (key, sub - set(record[key]))
    assert record["schema"] == "speedrun-record/1" and record["judge"] is None and record["target"] is None
    assert record["description"] == "tiny test run" and record["training"]["stopped_by"] == "max_steps"
    assert record["sweep"] == "tiny-sweep"  # --sweep: the scaling sweep the leaderboard fits it with
    training, compute = record["training"], record["compute"]
    assert training["steps"] == 40 and training["tokens"] == 40 * 4 * 32 == 40 * training["batch_tokens"]
    # what leaderboard.py recomputes, from independent pieces
    assert compute["flops_convention"] == "marin"
    assert compute["model_flops"] == 3 * flops.forward_flops_per_token(record["model"], 32) * training["tokens"]
    assert compute["hardware_flops"] == pytest.approx(
        compute["train_seconds"] * compute["device_count"] * compute["peak_flops_per_device"], rel=1e-12)
    assert compute["mfu"] == pytest.approx(compute["model_flops"] / compute["hardware_flops"])
    assert compute["peak_flops_source"] == "measured" and compute["device"].startswith("cpu")
    counted = flops.count_params(train.GPT(model.config_from_dict(record["model"])))["counted"]
    assert record["params"]["counted"] == counted and record["params"]["weight_class"] == "small"
    [(eval_id, ev)] = record["eval"].items()
    assert ev == {k: result["validations"][-1][k] for k in ("bpb", "loss", "tokens", "bytes", "fingerprint", "seq_len")}
    assert ev["seq_len"] == 32  # the context it was scored at: the run's
    assert len(ev["fingerprint"]) == 64 and ev["bytes"] > 0
    assert record["data"]["fingerprint"] == hashlib.sha256((data_dir / "meta.json").read_bytes()).hexdigest()
    for name, digest in record["code"]["sha256"].items():
        assert hashlib.sha256((ROOT / name).read_bytes()).hexdigest() == digest
    assert {"train.py", "model.py", "flops.py", "eval_bpb.py", "prepare.py"} <= set(record["code"]["sha256"])


def test_train_log_starts_with_train_py_source(straight_run):
    tmp, _ = straight_run
    log = (tmp / "record" / "train.log").read_text()
    source = (ROOT / "train.py").read_text()
    first_line, rest = log.split("\n", 1)
    assert first_line.split()[1] == "train.py"
    assert first_line.split()[2] == "sha256=" + hashlib.sha256(source.encode()).hexdigest()
    assert rest.startswith(source)
    losses = read_log_losses(tmp / "record" / "train.log")
    assert len(losses) == 40
    assert re.search(r"^step 40/40 loss \S+ lr \S+ tokens 5120 passes \S+ ms/step \S+ tok/s \d+ mfu \S+%$", log, re.M)


def test_resume_is_exact(straight_run, data_dir, tmp_path):
    tmp, straight = straight_run
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "step_000020.pt").write_bytes((tmp / "ckpt" / "step_000020.pt").read_bytes())
    assert checkpoint_files(tmp / "ckpt") == ["best.pt", "step_000020.pt", "step_000040.pt"]
    resumed = train.train(train.parse_args([
        f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'record'}", f"--ckpt_dir={ckpt}", *TINY,
        "--max_steps=40", "--val_every=20", "--checkpoint_every=20", "--resume=1", "--name=straight"]))
    assert len(resumed["losses"]) == 20
    np.testing.assert_allclose(resumed["losses"], straight["losses"][20:], rtol=0, atol=1e-6)
    assert resumed["validations"][-1]["bpb"] == pytest.approx(straight["validations"][-1]["bpb"], abs=1e-6)
    assert resumed["record"]["training"]["tokens"] == straight["record"]["training"]["tokens"]
    best = ("best_step", "best_val_bpb", "planned_passes")  # carried in the checkpoint's progress
    assert [resumed["record"]["training"][k] for k in best] == pytest.approx(
        [straight["record"]["training"][k] for k in best], abs=1e-6)
    # resumed into a new record folder: its train.log is complete, sources first, as leaderboard.py needs,
    # and the record is written there, not into the folder the checkpoint's run used
    assert (tmp_path / "record" / "train.log").read_text().startswith("=" * 20 + " train.py sha256=")
    assert json.loads((tmp_path / "record" / "results.json").read_text())["training"]["steps"] == 40
    assert resumed["out_dir"] == tmp_path / "record"
    # a resume that would change the global batch is refused, naming the batch it needs
    with pytest.raises(ValueError, match="--batch_tokens="):
        train.train(train.parse_args([
            f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'record2'}", f"--ckpt_dir={ckpt}", *TINY,
            "--batch_size=1", "--max_steps=60", "--resume=1", "--name=straight"]))


def test_two_gloo_processes_equal_one_process_with_grad_accum(data_dir, tmp_path):
    common = [f"--data_dir={data_dir}", *TINY, "--max_steps=6", "--val_every=0", "--val_tokens=256"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           *common, f"--out_dir={tmp_path / 'ddp'}", f"--ckpt_dir={tmp_path / 'ddp_ckpt'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_losses = read_log_losses(tmp_path / "ddp" / "train.log")
    single = train.train(train.parse_args([*common, "--grad_accum=2", f"--out_dir={tmp_path / 'one'}",
                                           f"--ckpt_dir={tmp_path / 'one_ckpt'}"]))
    assert len(ddp_losses) == 6
    np.testing.assert_allclose(ddp_losses, single["losses"], rtol=0, atol=1e-4)
    ddp_record = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert ddp_record["training"]["world_size"] == 2 and ddp_record["compute"]["device_count"] == 2
    assert ddp_record["training"]["batch_tokens"] == single["record"]["training"]["batch_tokens"] == 256
    assert ddp_record["eval"] and next(iter(ddp_record["eval"].values()))["bpb"] == pytest.approx(
        next(iter(single["record"]["eval"].values()))["bpb"], abs=1e-4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_by_c10d_rendezvous_equal_one_process(data_dir, tmp_path):
    """The README's multi-node command on one machine: two torchrun launchers (one per "node", one process each)
    meet at a c10d rendezvous on localhost and train over gloo; the run equals one process with grad_accum=2."""
    common = [f"--data_dir={data_dir}", *TINY, "--max_steps=4", "--val_every=0", "--val_tokens=256"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    endpoint = f"127.0.0.1:{free_port()}"
    nice = ["nice", "-n", "19"] if shutil.which("nice") else []
    launchers = [subprocess.Popen(
        [*nice, sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
         f"--node_rank={rank}", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=multinode-test",
         "train.py", *common, f"--out_dir={tmp_path / 'nodes'}", f"--ckpt_dir={tmp_path / f'nodes_ckpt{rank}'}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = []
    try:
        for launcher in launchers:
            outputs.append(launcher.communicate(timeout=300)[0])
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
    assert [launcher.returncode for launcher in launchers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    record = json.loads((tmp_path / "nodes" / "results.json").read_text())
    assert record["training"]["world_size"] == 2 and record["compute"]["device_count"] == 2
    single = train.train(train.parse_args([*common, "--grad_accum=2", f"--out_dir={tmp_path / 'one'}",
                                           f"--ckpt_dir={tmp_path / 'one_ckpt'}"]))
    np.testing.assert_allclose(read_log_losses(tmp_path / "nodes" / "train.log"), single["losses"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("budget, steps, stopped_by", [
    ("--max_tokens=1000", 7, "max_tokens"),                 # 128 tokens a step: 7 fit, never 8
    ("--max_flops=FLOPS_FOR_5.5_STEPS", 5, "max_flops"),
    ("--max_steps=4", 4, "max_steps"),
])
def test_budgets_stop_where_they_should(data_dir, tmp_path, budget, steps, stopped_by):
    if "FLOPS_FOR" in budget:
        config = train.model_config(train.parse_args(TINY), 257, delimiter=256)
        budget = f"--max_flops={5.5 * 128 * 3 * flops.forward_flops_per_token(config, 32)}"
    result = run_train(tmp_path, data_dir, "--max_steps=50", budget, "--val_every=0")
    training = result["record"]["training"]
    assert (training["steps"], training["stopped_by"], len(result["losses"])) == (steps, stopped_by, steps)


def test_time_and_target_budgets(data_dir, tmp_path):
    timed = run_train(tmp_path / "a", data_dir, "--max_steps=0", "--max_seconds=0.5", "--val_every=0")
    assert timed["record"]["training"]["stopped_by"] == "max_seconds"
    assert timed["record"]["compute"]["train_seconds"] >= 0.5 and 0 < timed["record"]["training"]["steps"] < 10_000
    # a target every model reaches at the first validation after step 0 would be too easy: use one met at step 5
    target = run_train(tmp_path / "b", data_dir, "--max_steps=50", "--val_every=5", "--target_bpb=7.0")
    t = target["record"]["target"]
    assert target["record"]["training"]["stopped_by"] == "target_bpb" and t["reached"] and t["value"] == 7.0
    assert target["record"]["training"]["steps"] % 5 == 0 and target["validations"][-1]["bpb"] <= 7.0
    assert all(v["bpb"] > 7.0 for v in target["validations"][:-1])
    assert 0 < t["seconds"] <= target["record"]["compute"]["train_seconds"]


def test_a_step_waits_for_the_device_only_when_it_logs(data_dir, tmp_path, monkeypatch):
    """Host syncs (item, tolist, bool/float of a tensor, cuda.synchronize) per step: none on a step that does not
    log, one on a step that does."""
    syncs = []
    real = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__bool__", "__float__", "__int__")}
    steps = {}
    real_step, real_read = train.train_step, train.read_pending

    def counting(name):
        def wrapper(self, *args, **kwargs):
            # AdamW's step counters live on the host on a CPU (fused AdamW, which train.py uses on CUDA, keeps
            # them on the device): reading one is not a device sync
            if not any("torch/optim/" in frame.filename for frame in traceback.extract_stack(limit=6)):
                syncs.append(name)
            return real[name](self, *args, **kwargs)
        return wrapper

    def step_and_count(run, state):
        before = len(syncs)
        real_step(run, state)
        steps.setdefault("train_step", []).append(len(syncs) - before)

    def read_and_count(run, state, stop):
        before = len(syncs)
        stats = real_read(run, state, stop)
        steps.setdefault("read_pending", []).append(len(syncs) - before)
        return stats

    for name in real:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: syncs.append("synchronize"))
    monkeypatch.setattr(train, "train_step", step_and_count)
    monkeypatch.setattr(train, "read_pending", read_and_count)
    run_train(tmp_path, data_dir, "--max_steps=12", "--log_every=4", "--val_every=0")
    assert steps["train_step"] == [0] * 12
    assert steps["read_pending"] == [1, 1, 1]


@pytest.mark.parametrize("precision, atol", [("fp32", 2e-4), ("bf16", 5e-3)])
def test_compiled_run_equals_eager_and_compiles_outside_the_clock(data_dir, tmp_path, precision, atol):
    common = [f"--data_dir={data_dir}", *TINY[:-1], "--max_steps=6", "--val_every=0", "--val_tokens=256",
              f"--precision={precision}"]
    eager = train.train(train.parse_args([*common, "--compile=0", f"--out_dir={tmp_path / 'e'}",
                                          f"--ckpt_dir={tmp_path / 'ec'}"]))
    compiled = train.train(train.parse_args([*common, "--compile=1", f"--out_dir={tmp_path / 'c'}",
                                             f"--ckpt_dir={tmp_path / 'cc'}"]))
    np.testing.assert_allclose(compiled["losses"], eager["losses"], rtol=0, atol=atol)
    assert compiled["record"]["compute"]["precision"] == precision
    # the compilation (seconds) happened in the warm-up: six tiny steps take a fraction of that
    assert compiled["record"]["compute"]["train_seconds"] < 5 * eager["record"]["compute"]["train_seconds"] + 1.0


def test_blow_up_is_never_checkpointed_and_names_the_last_good_checkpoint(data_dir, tmp_path, capsys):
    """Issue: a learning rate of 1e30 gave finite losses for a step whose update had already made the weights
    infinite, and that checkpoint was kept as "the last good one"."""
    code = train.main([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'r'}", f"--ckpt_dir={tmp_path / 'c'}", *TINY,
                       "--warmup_steps=0", "--max_steps=20", "--val_every=0", "--checkpoint_every=1",
                       "--keep_checkpoints=50", "--embed_lr=1e30", "--matrix_lr=1e30", "--scalar_lr=1e30",
                       "--head_lr=1e30"])
    err = capsys.readouterr().err
    assert code == 1 and "The last good checkpoint is " in err, err
    for path in (tmp_path / "c").glob("step_*.pt"):
        weights = torch.load(path, weights_only=True)["model"]
        assert all(bool(w.isfinite().all()) for w in weights.values()), path.name
        assert path.name in err or len(list((tmp_path / "c").glob("step_*.pt"))) > 1
    assert not (tmp_path / "r" / "results.json").exists()


def test_non_finite_validation_stops_without_a_record(data_dir, tmp_path, capsys, monkeypatch):
    real = train.eval_bpb.evaluate_bpb

    def nan_bpb(*args, **kwargs):
        return {**real(*args, **kwargs), "bpb": float("nan")}

    monkeypatch.setattr(train.eval_bpb, "evaluate_bpb", nan_bpb)
    code = train.main([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'r'}", f"--ckpt_dir={tmp_path / 'c'}", *TINY,
                       "--max_steps=4", "--val_every=2"])
    err = capsys.readouterr().err
    assert code == 1 and "validation BPB is nan at step 0" in err, err
    assert not (tmp_path / "r" / "results.json").exists()


def test_checkpoints_are_ordered_by_step_not_by_name(tmp_path):
    for step in (999_999, 1_000_000, 20):
        train.checkpoint_path(tmp_path, step).write_bytes(b"")
    (tmp_path / "step_notes.pt").write_bytes(b"")  # not a checkpoint of this run
    assert [p.name for p in train.checkpoints_by_step(tmp_path)] == [
        "step_000020.pt", "step_999999.pt", "step_1000000.pt"]
    assert train.checkpoints_by_step(tmp_path / "absent") == []


# -----------------------------------------------------------------------------
# Nothing lost: checkpoints owned by their run, locks, fallbacks, clear errors


def test_a_fresh_run_never_prunes_another_runs_checkpoints(straight_run, data_dir, tmp_path, capsys):
    """Issue: a new run into a folder holding an older run's higher-numbered checkpoints deleted every
    checkpoint it wrote, the final one included."""
    tmp, _ = straight_run
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in (tmp / "ckpt").glob("step_*.pt"):
        (ckpt / f.name).write_bytes(f.read_bytes())
    before = checkpoint_files(ckpt)
    code = train.main([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'r'}", f"--ckpt_dir={ckpt}", *TINY,
                       "--max_steps=12", "--val_every=0", "--checkpoint_every=5"])
    err = capsys.readouterr().err
    assert code == 2 and "--resume=1" in err and str(ckpt) in err, err
    assert checkpoint_files(ckpt) == before  # nothing deleted, nothing written


def test_resume_prunes_only_its_own_checkpoints(straight_run, data_dir, tmp_path):
    tmp, _ = straight_run
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "step_000020.pt").write_bytes((tmp / "ckpt" / "step_000020.pt").read_bytes())
    foreign = torch.load(ckpt / "step_000020.pt", weights_only=True)
    foreign["progress"]["run_id"] = "another-run"
    torch.save(foreign, ckpt / "step_000001.pt")  # an older, foreign checkpoint in the folder
    train.train(train.parse_args([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'r'}", f"--ckpt_dir={ckpt}", *TINY,
                                  "--max_steps=40", "--val_every=0", "--checkpoint_every=5", "--resume=1"]))
    assert sorted(p.name for p in ckpt.glob("step_*.pt")) == ["step_000001.pt", "step_000035.pt", "step_000040.pt"]


def test_kernels_are_a_runtime_switch_and_swiglu_trains(straight_run, data_dir, tmp_path):
    """A run started with the fused kernels resumes with --kernels=0 (the switch is not part of the model), and
    train.py trains any GPTConfig switch, --mlp=swiglu among them."""
    tmp, straight = straight_run
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "step_000020.pt").write_bytes((tmp / "ckpt" / "step_000020.pt").read_bytes())
    resumed = train.train(train.parse_args([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'r'}",
                                            f"--ckpt_dir={ckpt}", *TINY, "--max_steps=40", "--val_every=20",
                                            "--checkpoint_every=20", "--resume=1", "--kernels=0"]))
    np.testing.assert_allclose(resumed["losses"], straight["losses"][20:], rtol=0, atol=1e-4)
    swiglu = run_train(tmp_path / "s", data_dir, "--mlp=swiglu", "--max_steps=3", "--val_every=0")
    assert swiglu["record"]["model"]["mlp"] == "swiglu" and swiglu["record"]["training"]["steps"] == 3


def test_resume_refuses_other_data_or_tokenizer(straight_run, data_dir, tmp_path):
    """Issue: --resume=1 continued on another tokenizer of the same size and applied the saved data position
    to other shards."""
    tmp, _ = straight_run
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "step_000020.pt").write_bytes((tmp / "ckpt" / "step_000020.pt").read_bytes())
    other = write_dataset(tmp_path / "other", synthetic_stories(300, 5), synthetic_stories(20, 6), shard_tokens=30_000)
    with pytest.raises(ValueError, match="other data or another tokenizer"):
        train.train(train.parse_args([f"--data_dir={other}", f"--out_dir={tmp_path / 'r'}", f"--ckpt_dir={ckpt}",
                                      *TINY, "--max_steps=40", "--resume=1"]))


def test_resume_falls_back_past_a_truncated_checkpoint_and_removes_orphans(straight_run, data_dir, tmp_path, capsys):
    """Issue: a 0-byte or truncated newest checkpoint stopped the resume (an IndexError); orphan *.tmp.PID files
    from a kill -9 during a save were never removed."""
    tmp, straight = straight_run
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "step_000020.pt").write_bytes((tmp / "ckpt" / "step_000020.pt").read_bytes())
    (ckpt / "step_000030.pt").write_bytes(b"")                                                   # empty
    (ckpt / "step_000035.pt").write_bytes((tmp / "ckpt" / "step_000040.pt").read_bytes()[:5000])  # truncated
    (ckpt / ".step_000036.pt.tmp999999").write_bytes(b"partial")  # common.atomic_file's temp name
    resumed = train.train(train.parse_args([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'r'}",
                                            f"--ckpt_dir={ckpt}", *TINY, "--max_steps=40", "--val_every=20",
                                            "--checkpoint_every=20", "--resume=1"]))
    assert "skipping" in capsys.readouterr().err
    np.testing.assert_allclose(resumed["losses"], straight["losses"][20:], rtol=0, atol=1e-6)
    assert not list(ckpt.glob(".*.tmp*"))


def test_a_second_run_into_a_locked_folder_is_refused(data_dir, tmp_path, capsys):
    """Issue: two runs into one out_dir/ckpt_dir interleaved train.log, overwrote results.json and deleted each
    other's checkpoints. The lock names its holder; once the holder is gone (kill -9), the next run takes it."""
    script = "import pathlib, sys, time, common\nwith common.folder_lock(pathlib.Path(sys.argv[1])):\n" \
             "    print('locked', flush=True)\n    time.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "c")], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = train.main([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'r'}", f"--ckpt_dir={tmp_path / 'c'}",
                           *TINY, "--max_steps=2", "--val_every=0"])
        err = capsys.readouterr().err
        assert code == 2 and "in use by another run" in err and f"pid {holder.pid}" in err, err
        assert not (tmp_path / "r").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: the run proceeds and releases its own locks at the end
    result = run_train(tmp_path, data_dir, "--max_steps=2", "--val_every=0", f"--ckpt_dir={tmp_path / 'c'}")
    assert result["record"]["training"]["steps"] == 2
    assert not (tmp_path / "c" / "LOCK.json").exists() and not (tmp_path / "record" / "LOCK.json").exists()


def test_token_ids_outside_the_vocabulary_are_named(data_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in data_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    tokens = prepare.open_shard(bad / "train_000000.bin").copy()
    tokens[100] = 400  # the tokenizer has 257 ids
    prepare.write_shard(bad / "train_000000.bin", tokens)
    code = train.main([f"--data_dir={bad}", f"--out_dir={tmp_path / 'r'}", f"--ckpt_dir={tmp_path / 'c'}", *TINY,
                       "--max_steps=3", "--val_every=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "train_000000.bin" in err and "400" in err and "\n" not in err, err


def test_unwritable_out_dir_is_one_line(data_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = train.main([f"--data_dir={data_dir}", f"--out_dir={blocker / 'record'}", f"--ckpt_dir={tmp_path / 'c'}",
                       *TINY, "--max_steps=2", "--val_every=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: train.py: ") and "\n" not in err, err


def test_a_second_ctrl_c_waits_for_the_checkpoint_write(tmp_path):
    stop = train.StopRequested()
    stop.requested = True
    written = []
    with pytest.raises(KeyboardInterrupt):
        with stop.deferred():
            stop._handle(2, None)  # the second Ctrl-C arrives during the write
            written.append("checkpoint")
    assert written == ["checkpoint"]


def test_precision_auto_is_bf16_on_cuda_and_on_cpus_with_native_bf16(monkeypatch):
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    assert train.autocast_dtype("auto", cpu) is torch.bfloat16
    assert train.autocast_dtype("fp32", cpu) is None
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    assert train.autocast_dtype("auto", cpu) is None  # emulated bf16 would be slower than fp32
    assert train.autocast_dtype("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(train, "cuda_has_native_bf16", lambda device: True)  # an Ampere or newer GPU
    assert train.autocast_dtype("auto", cuda) is torch.bfloat16 and train.autocast_dtype("fp32", cuda) is None
    assert train.autocast_dtype("auto", mps) is None
    with pytest.raises(ValueError, match="--precision must be auto, bf16 or fp32"):
        train.parse_args(["--precision=fp16"])


def test_adam_weight_decay_goes_on_the_embeddings_and_head_only():
    hp = train.parse_args(["--preset=tiny", "--value_embeds=1", "--tie_embeddings=0", "--adam_weight_decay=0.03",
                           "--weight_decay=0.01", "--max_steps=1"])
    model = train.GPT(train.model_config(hp, 96, 0))
    adam, muon = train.build_optimizers(model, hp, 0, 1, torch.device("cpu"))
    decay = {group["kind"]: group["weight_decay"] for group in adam.param_groups}
    assert decay == {"embed": 0.03, "head": 0.03, "scalar": 0.0}
    assert {group["weight_decay"] for group in muon.param_groups} == {0.01}


def test_cpu_defaults_apply_without_model_flags_and_are_what_the_budget_study_writes_out():
    import cpu_track_ablation
    hp = train.parse_args(["--device=cpu"])
    assert (hp.preset, hp.seq_len, hp.batch_size, hp.batch_tokens, hp.adam_weight_decay) == ("tiny", 0, 0, 4096, 0.1)
    assert hp.model["value_embeds"] == 2 and not hp.model["tie_embeddings"]
    assert train.parse_args(["--device=cpu", "--batch_size=8"]).preset == "small"  # a batch flag: the block
    written_out = train.parse_args(["--device=cpu", *cpu_track_ablation.BUDGET_BASE])
    ignore = {"val_every", "log_every"}
    assert {k: v for k, v in dataclasses.asdict(written_out).items() if k not in ignore} == \
        {k: v for k, v in dataclasses.asdict(hp).items() if k not in ignore}


# -----------------------------------------------------------------------------
# Nothing lost, nothing faked, nothing crashes (issue 23: each failed on the train.py before it)


def foreign_checkpoint(straight_run, ckpt: pathlib.Path, **hparams) -> pathlib.Path:
    """The straight run's step-20 checkpoint in `ckpt`, as another run's (another run id)."""
    tmp, _ = straight_run
    ckpt.mkdir()
    saved = torch.load(tmp / "ckpt" / "step_000020.pt", weights_only=True)
    saved["progress"]["run_id"] = "0123456789abcdef0123456789abcdef"
    saved["hparams"].update(hparams)
    torch.save(saved, ckpt / "step_000020.pt")
    return ckpt / "step_000020.pt"


def test_resume_never_writes_into_another_runs_record(straight_run, data_dir, tmp_path, capsys):
    """Issue: --resume=1 --out_dir=<another finished record> replaced its results.json and appended to its
    train.log, silently."""
    victim = run_train(tmp_path / "b", data_dir, "--max_steps=2", "--val_every=0")["out_dir"]
    before = {name: (victim / name).read_bytes() for name in ("results.json", "train.log")}
    ckpt = foreign_checkpoint(straight_run, tmp_path / "ckpt")
    code = train.main([f"--data_dir={data_dir}", f"--out_dir={victim}", f"--ckpt_dir={ckpt.parent}", *TINY,
                       "--max_steps=40", "--val_every=0", "--resume=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and str(victim) in err and "another run" in err and "--out_dir" in err, err
    assert {name: (victim / name).read_bytes() for name in before} == before
    # its own folder is its own: a run resumed there continues its record
    resumed = run_train(tmp_path / "b", data_dir, "--max_steps=3", "--val_every=0", "--resume=1")
    assert resumed["out_dir"] == victim and json.loads((victim / "results.json").read_text())["training"]["steps"] == 3


def test_resume_refuses_another_reshuffle(straight_run, data_dir, tmp_path):
    """Issue: --resume accepted a changed --reshuffle: windows of the epoch read twice, others skipped."""
    ckpt = foreign_checkpoint(straight_run, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="--reshuffle=1, this is --reshuffle=0.*resume with --reshuffle=1"):
        train.train(train.parse_args([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'r'}",
                                      f"--ckpt_dir={ckpt.parent}", *TINY, "--max_steps=40", "--resume=1",
                                      "--reshuffle=0"]))
    assert not (tmp_path / "r").exists()


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_one(data_dir, tmp_path, capsys, monkeypatch):
    """Issue: a full disk during a checkpoint write was a traceback (inline_container.cc ... unexpected pos)."""
    class FullDisk(io.FileIO):  # the second checkpoint's file: the disk fills after 3,000 bytes
        def write(self, data):
            if self.tell() + memoryview(data).nbytes > 3000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        if "step_000004.pt.tmp" in str(path):
            return FullDisk(path, "wb")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(common, "open", open_on_a_full_disk, raising=False)  # common.atomic_file writes it
    code = train.main([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'r'}", f"--ckpt_dir={tmp_path / 'c'}", *TINY,
                       "--max_steps=6", "--val_every=0", "--checkpoint_every=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("error: train.py: cannot write the checkpoint of step 4"), err
    assert "No space left on device" in err and "step_000002.pt" in err and "--resume=1" in err, err
    assert checkpoint_files(tmp_path / "c") == ["step_000002.pt"]
    assert model.load_checkpoint(tmp_path / "c" / "step_000002.pt")["step"] == 2
    assert not (tmp_path / "r" / "results.json").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--name=héllo wörld/../../x"], "--name="),
    (["--name=a/b"], "--name="),
    ([f"--out_dir={train.ROOT / 'records' / 'open' / 'x'}"], "--track=tinystories"),
    ([f"--out_dir={train.ROOT / 'records' / 'tinystories' / 'bad name'}"], "folder name"),
    ([f"--out_dir={train.ROOT / 'records' / 'tinystories'}"], "records/<track>/<folder>"),
    ([f"--out_dir={train.ROOT / 'records' / 'nowhere' / 'x'}"], "unknown track folder"),
])
def test_name_and_out_dir_are_checked_before_training(flags, needle, data_dir, capsys):
    """Issue: --name='héllo wörld/../../x' wrote to records/x/; a name the leaderboard refuses, or an --out_dir
    under another track, trained fully and was refused only then."""
    code = train.main([f"--data_dir={data_dir}", *TINY, "--max_steps=2", "--val_every=0", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and needle in err, err
    assert not (train.ROOT / "records" / "x").exists() and not (train.ROOT / "checkpoints" / "x").exists()


def test_record_locations_the_leaderboard_takes_are_accepted():
    for flags in (["--name=my-run_2.b"], ["--out_dir=runs/try"], ["--out_dir=/tmp/anywhere/else"],
                  [f"--out_dir={train.ROOT / 'records' / 'open' / 'x'}", "--track=open"],
                  [f"--out_dir={train.ROOT / 'records' / 'tinystories' / '2026-01-01_x' / 'seed1'}"]):
        train.parse_args(flags)


def test_a_time_budget_stops_within_a_step_of_it(data_dir, tmp_path, monkeypatch):
    """Issue: the clock was read only at logged steps: --max_seconds=1e-9 trained 20 steps, --max_seconds=300 ran
    365.8 s. A fake clock that moves 1 s per training step (real time would make the test flaky)."""
    now = [1000.0]
    real_step = train.train_step

    def step_taking_a_second(run, state):
        real_step(run, state)
        now[0] += 1.0

    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(train, "train_step", step_taking_a_second)
    result = run_train(tmp_path / "a", data_dir, "--max_steps=0", "--max_seconds=5.5", "--log_every=10", "--val_every=0")
    record = result["record"]
    assert (record["training"]["steps"], record["training"]["stopped_by"]) == (6, "max_seconds")
    assert record["compute"]["train_seconds"] == 6.0
    tiny = run_train(tmp_path / "b", data_dir, "--max_steps=0", "--max_seconds=1e-9", "--log_every=10", "--val_every=0")
    assert tiny["record"]["training"]["steps"] == 1


def test_a_time_budget_stops_every_process_at_the_same_step(data_dir, tmp_path):
    """Two gloo processes read their own clocks between logs; they agree (the largest reading) at every step, or
    one would stop while the other waits in a collective."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           f"--data_dir={data_dir}", *TINY, "--max_steps=0", "--max_seconds=1", "--log_every=1000", "--val_every=0",
           "--val_tokens=256", f"--out_dir={tmp_path / 'ddp'}", f"--ckpt_dir={tmp_path / 'ddp_ckpt'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "ddp" / "results.json").read_text())
    # before the first logged step (1000), which is where the clock was read before
    assert record["training"]["stopped_by"] == "max_seconds" and 1 <= record["training"]["steps"] < 1000


def test_a_checkpoint_a_safe_load_refuses_is_named_without_the_unsafe_advice(tmp_path):
    """Issue: the message was cut at 200 characters: it kept "Re-running torch.load with weights_only set to
    False" and dropped PyTorch's warning that this can run arbitrary code."""
    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo this would run",))

    torch.save({"model": {}, "config": {}, "step": 1, "extra": RunsCode()}, tmp_path / "step_000001.pt")
    with pytest.raises(ValueError) as caught:
        model.load_checkpoint(tmp_path / "step_000001.pt")
    message = str(caught.value)
    assert "system" in message and "do not load it" in message and "run code" in message, message
    assert "weights_only" not in message and "False" not in message and "\n" not in message, message


def test_an_orphan_results_temp_file_is_removed_and_ignored(straight_run, data_dir, tmp_path):
    """Issue: a kill -9 during the results write left .results.json.tmpPID: not git-ignored, never removed."""
    record = run_train(tmp_path, data_dir, "--max_steps=2", "--val_every=0")["out_dir"]
    orphan = record / ".results.json.tmp999999999"  # no process has this id
    orphan.write_text("{")
    live = record / f".results.json.tmp{os.getpid()}x"  # not a pid: someone else's file, left alone
    live.write_text("{")
    run_train(tmp_path, data_dir, "--max_steps=3", "--val_every=0", "--resume=1")
    assert not orphan.exists() and live.exists()
    if (ROOT / ".git").exists():
        check = subprocess.run(["git", "check-ignore", "-q", "records/tinystories/x/.results.json.tmp4242"], cwd=ROOT)
        assert check.returncode == 0


# -----------------------------------------------------------------------------
# The device path: what a GPU without bf16 or Triton, MPS or a CPU runs; the torch floor; counting and validation

BF16 = torch.bfloat16


@pytest.mark.parametrize("device_type, native_bf16, triton, amp_dtype, compiled, attention, noted", [
    ("cuda", True, True, BF16, True, "flex_attention", []),                # A100, H100, RTX 30xx/40xx
    ("cuda", False, True, None, True, "flex_attention", ["fp32"]),         # T4, V100, RTX 20xx
    ("cuda", False, False, None, False, "dense masks", ["fp32", "torch.compile off", "dense"]),  # GTX 10xx
    ("mps", False, False, None, False, "dense masks", ["fp32", "torch.compile off"]),  # Apple Silicon
    ("cpu", True, False, BF16, True, "dense masks", []),
    ("cpu", False, False, None, True, "dense masks", ["fp32"]),
])
def test_device_path_for_every_kind_of_device(device_type, native_bf16, triton, amp_dtype, compiled, attention, noted):
    path = train.device_path("auto", True, device_type, native_bf16, triton, flex=True)
    assert (path.amp_dtype, path.compile, path.attention) == (amp_dtype, compiled, attention)
    assert [n for n in noted if not any(note.startswith(n) or n in note for note in path.notes)] == []
    assert len(path.notes) == len(noted)
    assert path.describe().startswith(("bf16 autocast" if amp_dtype else "fp32") + ", masked attention " + attention)
    assert not train.device_path("auto", False, device_type, native_bf16, triton, True).compile  # --compile=0 stays off


def test_precision_choices_on_a_gpu_without_bf16():
    """--precision=bf16 on a GPU without native bf16 is refused (emulated there: slower than fp32; older torch
    raises inside autocast); auto gives fp32, and Muon's Newton-Schulz runs in fp32 too."""
    cuda = torch.device("cuda")
    with pytest.raises(ValueError, match="--precision=bf16: this GPU has no native bf16"):
        train.device_path("bf16", True, "cuda", False, True, True)
    assert train.device_path("bf16", True, "cpu", False, False, True).amp_dtype is BF16  # a CPU emulates: allowed
    assert train.newton_schulz_dtype(None, cuda, native_bf16=False) is torch.float32
    assert train.newton_schulz_dtype(None, cuda, native_bf16=True) is BF16  # fp32 run on an A100: bf16 NS
    assert train.newton_schulz_dtype(BF16, cuda) is BF16
    assert train.newton_schulz_dtype(None, torch.device("cpu")) is torch.float32
    assert train.device_path("fp32", True, "cuda", True, True, True).notes == ()  # asked for: nothing to say


def test_torch_floor_is_checked_before_anything_is_imported(tmp_path):
    assert train.torch_below_floor("2.4.1+cu121") and train.torch_below_floor("2.5.0a0+git12")
    assert not train.torch_below_floor("2.5.0") and not train.torch_below_floor(torch.__version__)
    old_torch = "import runpy, sys, torch; torch.__version__ = '2.4.1'; sys.argv = ['train.py', '--help']; " \
                "runpy.run_path('train.py', run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", old_torch], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: train.py: torch 2.4.1 is installed, this project needs torch >= 2.5")


@pytest.fixture(scope="module")
def spied_runs(tmp_path_factory, data_dir):
    """Two short CPU runs, fp32 and bf16, recording the device of every model whose parameters are counted and
    the autocast dtype each validation is asked for."""
    counted, validated = [], []
    count, evaluate = flops.count_params, train.eval_bpb.evaluate_bpb
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flops, "count_params", lambda m, *a, **k: counted.append(next(m.parameters()).device.type)
                   or count(m, *a, **k))
        mp.setattr(train.eval_bpb, "evaluate_bpb", lambda *a, **k: validated.append(k.get("amp_dtype", "unset"))
                   or evaluate(*a, **k))
        for precision in ("fp32", "bf16"):
            run_train(tmp_path_factory.mktemp(precision), data_dir, "--max_steps=2", "--val_every=0",
                      "--val_tokens=256", f"--precision={precision}")
    return counted, validated


def test_parameters_are_counted_on_the_meta_device(spied_runs):
    """Not with a forward on the run's device (on a GPU: an eager block mask and an extra flex graph compiled)."""
    counted, _ = spied_runs
    assert counted and set(counted) == {"meta"}


def test_validation_autocasts_in_the_runs_precision(spied_runs):
    """eval_bpb gets the run's dtype (on CUDA it autocasts to it: an fp32 run is validated in fp32); and the
    eval_bpb command line's --precision picks the same way."""
    _, validated = spied_runs
    assert validated == [None, BF16]
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert train.eval_bpb.eval_dtype("auto", cuda, native_bf16=True) is BF16
    assert train.eval_bpb.eval_dtype("auto", cuda, native_bf16=False) is None
    assert train.eval_bpb.eval_dtype("fp32", cuda) is None and train.eval_bpb.eval_dtype("bf16", cuda) is BF16
    assert train.eval_bpb.eval_dtype("bf16", cpu) is None  # CPU and MPS evaluate in fp32


def test_an_fp32_run_without_a_datasheet_peak_is_measured_in_fp32(monkeypatch):
    measured = []
    monkeypatch.setattr(flops, "measure_matmul_peak", lambda device, dtype: measured.append(dtype) or 1e12)
    monkeypatch.setattr(train, "MEASURED_PEAKS", {})
    assert train.peak_flops_per_device(torch.device("cpu"), "cpu: test", None) == (1e12, "measured")
    assert train.peak_flops_per_device(torch.device("cpu"), "cpu: test", BF16) == (1e12, "measured")
    assert measured == [torch.float32, BF16]


def test_bench_step_compiles_newton_schulz_in_every_row(monkeypatch):
    """bench/bench_step.py compiles each row afresh: four presets x four matrix shapes would pass dynamo's
    recompile limit (8) on newton_schulz's one code object, and the later rows would run it eagerly. Compiled
    here with fullgraph=True, where hitting the limit is an error, on dynamo's eager backend (the limit is
    dynamo's, whatever the backend; Inductor would take minutes on this CPU)."""
    import bench_step
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, **{**kw, "backend": "eager", "fullgraph": True}))
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    shapes_seen = set()
    for width in (32, 48, 64, 80):  # four rows, four Newton-Schulz shapes each: 16 graphs in all
        _, model, _, run, _ = bench_step.build("tiny", dict(n_layer=2, n_embd=width, n_head=2, n_kv_head=1), 256, 32,
                                               2, torch.device("cpu"), True, "fp32")
        muon = run.optimizers[1]
        with torch.no_grad():
            for group in muon.param_groups:
                stack = torch.randn(len(group["params"]), *group["params"][0].shape)
                shapes_seen.add(tuple(stack.shape[1:]))
                torch.testing.assert_close(muon.orthogonalise(stack, 5, torch.float32), train.newton_schulz(stack, 5))
    assert len(shapes_seen) == 16


# Away from the tuning point: the passes cap, the context from the data, validation as a guard


@pytest.mark.parametrize("train_tokens, planned, tokens, capped", [
    (331_939, 1_327_104, 1_327_104, False),           # 4.0 passes: under the cap, as given
    (331_939, 9_584_640, 4 * 331_939, True),          # the issue's 300 s on the split: 28.9 passes
    (836_255, 2_084_864, 2_084_864, False),           # the CPU track's point at context 512: 2.49 passes
    (836_255, 12_800_000, 4 * 836_255, True),
])
def test_choose_passes_runs_the_budget_up_to_the_cap(train_tokens, planned, tokens, capped):
    chosen, why = train.choose_passes(train_tokens, planned, 4.0)
    assert chosen == tokens and ("capped at --max_passes=4" in why) == capped
    assert f"{planned / train_tokens:.2f} passes over {train_tokens:,} training tokens" in why
    assert train.choose_passes(train_tokens, planned, 0.0)[0] == planned  # no cap


def test_planned_steps_stop_at_the_passes_cap_for_any_larger_budget():
    cap = 4 * 10_000 // 256  # 4 passes over 10,000 tokens at 256 tokens a step
    for budget in (["--max_steps=1000"], ["--max_tokens=1e6"], ["--max_flops=1e12"], ["--max_seconds=300"]):
        assert train.planned_steps(train.parse_args(budget), 256, 10**6, train_tokens=10_000) == (cap, "max_passes")
    assert train.planned_steps(train.parse_args(["--max_steps=100"]), 256, 1, train_tokens=10_000) == (100, "max_steps")
    assert train.planned_steps(train.parse_args([f"--max_steps={cap}"]), 256, 1, 10_000) == (cap, "max_steps")  # a tie
    # the CPU track's FLOPs at context 512 plan 509 steps, 2.49 passes: the FLOPs bind, not the cap
    flops_per_step = 3 * 3_563_520 * 4096
    assert train.planned_steps(train.parse_args(["--max_flops=2.2317e13"]), 4096, flops_per_step, 836_255) == \
        (int(2.2317e13 // flops_per_step), "max_flops") == (509, "max_flops")
    uncapped = train.parse_args(["--max_steps=1000", "--max_passes=0"])
    assert train.planned_steps(uncapped, 256, 1, train_tokens=10_000) == (1000, "max_steps")


def test_no_hidden_step_cap_when_another_budget_is_given():
    assert train.parse_args([]).max_steps == 2000  # no budget at all: the block's step count
    for budget in ("--max_seconds=300", "--max_tokens=1e6", "--max_flops=2.2e13"):
        assert train.parse_args([budget]).max_steps == 0
    assert train.parse_args(["--max_seconds=300", "--max_steps=5"]).max_steps == 5  # given: kept


def test_story_context_holds_the_95th_percentile_story():
    lengths = np.arange(1, 401)  # the 95th percentile is 380.05 (numpy's linear interpolation): up to 512
    assert np.percentile(lengths, 95) == pytest.approx(380.05) and train.story_context(lengths) == 512
    assert train.story_context(np.array([300] * 96 + [5000] * 4)) == 512  # the longest 4% do not decide
    assert train.story_context(np.full(10, 20)) == 64 and train.story_context(np.full(10, 9000)) == 2048
    assert train.story_context(np.array([128] * 100)) == 128  # a power of two stays


def test_cpu_defaults_take_the_context_from_the_data(data_dir, tmp_path):
    lengths = train.document_lengths(data_dir / "train_000000.bin", DELIM)
    tokens = prepare.open_shard(data_dir / "train_000000.bin")
    assert lengths.sum() == len(tokens) - np.flatnonzero(tokens == DELIM)[0] and (lengths > 1).all()
    hp = train.parse_args(["--device=cpu", f"--data_dir={data_dir}"])
    settled = train.settle_data_settings(hp, train.load_data(hp), world_size=2)
    expected = 2 ** math.ceil(math.log2(np.percentile(lengths, 95)))
    assert (hp.seq_len, settled.seq_len, settled.batch_size) == (0, expected, 4096 // (2 * expected))
    given = train.settle_data_settings(dataclasses.replace(hp, seq_len=64, batch_size=3), train.load_data(hp), 1)
    assert (given.seq_len, given.batch_size) == (64, 3)


def random_letters(n_docs: int, length: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(length)) for _ in range(n_docs)]


def test_validation_guard_keeps_the_best_warns_and_stops_on_patience(tmp_path):
    """Random letters: the model first learns their distribution (validation improves), then memorises the few
    training documents (training loss falls, validation worsens): the best step is kept and the run stops."""
    data = write_dataset(tmp_path / "data", random_letters(4, 200, 0), random_letters(4, 200, 1), shard_tokens=10**6)
    result = run_train(tmp_path, data, "--max_steps=3000", "--max_passes=0", "--val_every=20", "--patience=3",
                       "--matrix_lr=0.05", "--embed_lr=0.1", "--head_lr=0.05", "--n_embd=64", "--n_layer=2")
    record, vals = result["record"], result["validations"]
    training = record["training"]
    best = min(vals, key=lambda v: v["bpb"])
    assert training["stopped_by"] == "patience" and training["steps"] < 3000
    assert (training["best_step"], training["best_val_bpb"]) == (best["step"], best["bpb"])
    assert [v["step"] for v in vals][-4] == best["step"] and all(v["bpb"] > best["bpb"] for v in vals[-3:])
    saved = model.load_checkpoint(tmp_path / "ckpt" / "best.pt")
    assert saved["step"] == best["step"] and saved["progress"]["best_val_bpb"] == best["bpb"]
    log = (tmp_path / "record" / "train.log").read_text()
    assert re.search(r"^warning: val bpb rose [\d.]+ -> [\d.]+ while the training loss fell", log, re.M)
    assert f"early stop: 3 validations without a new best (--patience=3); the best is step {best['step']}" in log
    train_tokens = 4 * 201  # each document's letters after its delimiter
    assert training["passes"] == pytest.approx(training["tokens"] / train_tokens)
    assert training["planned_passes"] == pytest.approx(3000 * 128 / train_tokens)


def test_the_log_and_record_count_passes_and_a_timed_run_plans_at_its_first_log(data_dir, tmp_path):
    result = run_train(tmp_path, data_dir, "--max_seconds=1", "--val_every=0", "--log_every=2")
    training, log = result["record"]["training"], (tmp_path / "record" / "train.log").read_text()
    train_tokens = sum(prepare.read_shard_header(f)[1] for f in prepare.list_shards(data_dir, "train"))
    assert training["passes"] == pytest.approx(training["tokens"] / train_tokens) and training["passes"] > 0
    assert training["stopped_by"] == "max_seconds" and training["best_step"] == training["steps"]
    assert re.search(r"^budget: \d+ steps \(max_passes\) 1 s$", log, re.M)  # no step cap nobody set
    plan = re.search(r"^plan: ([\d,]+) tokens = ([\d.]+) passes over ([\d,]+) training tokens", log, re.M)
    assert plan and int(plan[3].replace(",", "")) == train_tokens
    assert training["planned_passes"] == pytest.approx(int(plan[1].replace(",", "")) / train_tokens, rel=1e-3)
    step_lines = re.findall(r"^step (\d+)/\d+ loss \S+ lr \S+ tokens (\d+) passes ([\d.]+) ", log, re.M)
    assert step_lines and all(float(p) == pytest.approx(int(t) / train_tokens, abs=0.006) for _, t, p in step_lines)
