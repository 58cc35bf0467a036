"""
Train a GPT from scratch on prepared token shards, and write the run's record. The file participants edit.

    python train.py --data_dir=data/tinystories                         # the block below
    python train.py --preset=tiny --seq_len=256 --max_seconds=300       # any hyperparameter: --key=value
    python train.py --n_layer=6 --mlp=swiglu                            # any GPTConfig field (model.py) too
    torchrun --standalone --nproc_per_node=8 train.py --batch_tokens=524288

Top to bottom: the hyperparameters; the data loader (prepare.py's shards, sequences that start at document
starts, each rank reading its own); Muon for the hidden matrices and AdamW for the rest, with a
warmup-stable-decay schedule; the run's state, its checkpoints and its record; and train(), whose loop
validates, steps and checkpoints until the first budget is reached (max_steps / max_tokens / max_flops /
max_seconds / target_bpb). The record is OUT_DIR/train.log (the source of every project file that ran,
the environment, one line per step) and OUT_DIR/results.json (leaderboard.py's format).

Timing: train_seconds counts training steps only. torch.compile's warm-up, validation and checkpoint
writes are excluded (as modded-nanogpt does), so a record's time and MFU measure training.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import inspect
import json
import math
import pathlib
import queue
import random
import re
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.torch_version import TorchVersion

# The oldest torch the project runs on (requirements.txt gives the reason per API). Checked here, before
# model.py and kernels.py are imported, so that an older torch gets this line rather than a traceback.
TORCH_FLOOR = "2.5"


def torch_below_floor(version: str) -> bool:
    return TorchVersion(version) < TORCH_FLOOR


if torch_below_floor(torch.__version__):
    print(f"error: train.py: torch {torch.__version__} is installed, this project needs torch >= {TORCH_FLOOR} "
          f"(flex_attention with block masks, enable_gqa; requirements.txt): pip install 'torch>={TORCH_FLOOR}'",
          file=sys.stderr)
    sys.exit(2)

import common  # noqa: E402 (after the version check)
import eval_bpb  # noqa: E402
import flops  # noqa: E402
import leaderboard  # noqa: E402
import prepare  # noqa: E402
import model as model_lib  # noqa: E402
from model import (GPT, PRESETS, GPTConfig, build_config, cuda_has_native_bf16, load_checkpoint,  # noqa: E402
                   save_checkpoint)

ROOT = pathlib.Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# Hyperparameters. `python train.py --help` prints this block; `--key=value` overrides any field, and any
# GPTConfig field (--n_layer=6, --mlp=swiglu, ...) goes into `model`.


@dataclass
class Hyperparameters:
    # data and the record
    data_dir: str = "data/tinystories"  # prepared by prepare.py: train_*.bin, val_*.bin, meta.json (gives the tokenizer)
    track: str = "tinystories"          # tinystories | tinystories-wiki | fineweb-edu | open
    name: str = "baseline"              # run name: records/<track>/<date>_<name>/ and checkpoints/<name>/
    description: str = ""               # one line for the leaderboard: what this run changes
    sweep: str = ""                     # a scaling sweep this run belongs to: the leaderboard fits its runs together
    author: str = ""
    affiliation: str = ""
    url: str = ""
    out_dir: str = ""                   # "" = records/<track>/<YYYY-MM-DD>_<name>/
    ckpt_dir: str = ""                  # "" = checkpoints/<name>/ (git-ignored: a record never holds weights)
    device: str = "auto"                # auto | cpu | cuda | mps (torchrun: cuda:<local rank>)
    # model: a model.py preset, then the GPTConfig fields given here or on the command line. On a CPU with
    # none of the model and batch settings given, DEVICE_DEFAULTS["cpu"] below replaces them.
    preset: str = "small"               # tiny | small | medium | large | gpt2-124m (model.PRESETS)
    model: dict = field(default_factory=dict)  # e.g. dict(n_layer=8, mlp="swiglu"); --n_layer=8 adds to it
    seq_len: int = 1024                 # context length in training and validation; 0 = a whole story: the 95th
                                        # percentile of the training documents' lengths, up to a power of two
    window_warmup: float = 0.0          # attention windows grow from 1/8 to the model's over this share of the run
    # batch: global batch = world_size * batch_size * grad_accum * seq_len tokens
    batch_size: int = 32                # sequences per process per micro-step; 0 = batch_tokens / (world x seq_len)
    grad_accum: int = 1                 # micro-steps per optimizer step per process
    reshuffle: bool = True              # epochs after the first read each shard's windows in a new order
    batch_tokens: int = 0               # >0 fixes the global batch and derives grad_accum from the world size
    # optimizers and schedule
    matrix_lr: float = 0.02             # Muon, hidden 2-D matrices
    muon_momentum: float = 0.95         # Nesterov momentum of Muon
    muon_momentum_start: float = 0.85   # ... which warms up from this value
    muon_momentum_warmup: int = 0       # ... over these steps (modded-nanogpt #9: 0.85 -> 0.95 in 300); 0 = off
    embed_lr: float = 0.05              # AdamW, token and value embeddings
    head_lr: float = 0.01               # AdamW, lm_head (and a tied embedding)
    scalar_lr: float = 0.02             # AdamW, norm weights, gains and other non-matrix parameters
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    weight_decay: float = 0.0           # decoupled, on the Muon matrices
    adam_weight_decay: float = 0.0      # decoupled, on the AdamW embeddings and lm_head (not the scalars)
    grad_clip: float = 1.0              # max global grad norm, 0 = off
    warmup_steps: int = 10              # linear warmup of every learning rate
    cooldown_frac: float = 0.4          # warmup-stable-decay: linear decay over the last fraction of the run
    final_lr_frac: float = 0.0          # learning rate at the end of the decay, as a fraction of the peak
    # budgets: the run stops at the first one reached (0 = not set). Steps, tokens and FLOPs are never exceeded.
    max_steps: int = 2000               # applies only when no other budget is given on the command line
    max_tokens: int = 0
    max_flops: float = 0.0              # model FLOPs (flops.py, Marin's convention)
    max_seconds: float = 0.0            # training seconds (warm-up and validation excluded)
    target_bpb: float = 0.0             # stop when validation BPB <= target; the time to target is recorded
    max_passes: float = 4.0             # at most this many passes over the training tokens (0 = no cap): the
                                        # schedule completes there, so a larger budget stops at the same point
    patience: int = 0                   # stop after this many validations without a new best (0 = never)
    # validation, checkpoints, logging
    log_every: int = 10                 # steps between log lines: the only steps that wait for the device
    val_every: int = 250                # steps between validations (0 = only at the end)
    val_tokens: int = 0                 # tokens of the val shards scored each time (0 = all): a fixed subset
    checkpoint_every: int = 0           # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2           # this run's older step_*.pt files are deleted
    resume: bool = False                # continue exactly from the newest readable checkpoint in ckpt_dir
    seed: int = 1337
    compile: bool = True                # torch.compile the model and Muon (warm-up outside the clock); 0 = eager
    kernels: bool = True                # kernels.py's fused ops (a runtime switch: a run may resume with 0)
    precision: str = "auto"             # auto | bf16 | fp32: bf16 autocast (fp32 weights and optimizer states) on
                                        # CUDA and on CPUs with native bf16 (AVX512-BF16, AMX); fp32 elsewhere
    wandb: bool = False                 # log to Weights & Biases (WANDB_MODE=offline works without an account)
    wandb_project: str = "speedrun"


MODEL_FIELDS = tuple(f.name for f in fields(GPTConfig) if f.name not in ("vocab_size", "block_size", "delimiter_id"))
MODEL_AND_BATCH = {"preset", "model", "seq_len", "batch_size", "grad_accum", "batch_tokens", *MODEL_FIELDS}
OTHER_BUDGETS = ("max_tokens", "max_flops", "max_seconds")

# What `python train.py --data_dir=D` runs when none of MODEL_AND_BATCH is given: on a CPU, the CPU track's
# recipe (it fits a laptop's memory; README "The CPU track" has its ablation); elsewhere the block above.
DEVICE_DEFAULTS = {
    "cpu": dict(preset="tiny", seq_len=0, batch_size=0, batch_tokens=4096, window_warmup=0.3, muon_momentum_warmup=100,
                weight_decay=0.1, adam_weight_decay=0.1,
                model=dict(tie_embeddings=False, value_embeds=2, value_residual=True, x0_mix=True, unet=True,
                           short_window=64)),
}


def device_defaults(given: dict) -> dict:
    """The settings DEVICE_DEFAULTS puts in place for this command line (empty when it sets any model or batch
    setting itself, or when the device has none)."""
    if MODEL_AND_BATCH & set(given):
        return {}
    return dict(DEVICE_DEFAULTS.get(common.resolve_device(given.get("device", "auto")).type, {}))


def parse_flags(argv: list[str]) -> dict:
    """The flags given, typed by prepare.py's one option parser (integers may be written 1e6, never rounded)."""
    parser = common.ArgumentParser(prog="train.py", add_help=False)
    common.add_dataclass_flags(parser, Hyperparameters, skip=("model",))
    common.add_dataclass_flags(parser, GPTConfig, skip=("vocab_size", "block_size", "delimiter_id"))
    return vars(parser.parse_args(argv))


def parse_args(argv: list[str]) -> Hyperparameters:
    """The block, then DEVICE_DEFAULTS where they apply, then the --key=value flags; GPTConfig fields go into
    hp.model."""
    given = parse_flags(argv)
    if "max_steps" not in given and any(given.get(k) for k in OTHER_BUDGETS):
        given["max_steps"] = 0  # the block's step count is for a command line with no budget, never a hidden cap
    hp = Hyperparameters(**device_defaults(given))
    hp = Hyperparameters(**{**asdict(hp), **{k: v for k, v in given.items() if k not in MODEL_FIELDS}})
    hp.model = {**hp.model, **{k: v for k, v in given.items() if k in MODEL_FIELDS}}
    check_hyperparameters(hp)
    return hp


def check_hyperparameters(hp: Hyperparameters) -> None:
    positive = ["grad_accum", "keep_checkpoints", "log_every"]
    non_negative = ["seq_len", "batch_size", "batch_tokens", "warmup_steps", "max_steps", "max_tokens", "max_flops",
                    "max_seconds", "max_passes", "patience", "target_bpb", "val_every", "val_tokens",
                    "checkpoint_every", "grad_clip", "weight_decay", "adam_weight_decay", "muon_momentum_warmup",
                    "matrix_lr", "embed_lr", "head_lr", "scalar_lr"]
    for key in positive:
        if getattr(hp, key) <= 0:
            raise ValueError(f"--{key} must be positive, got {getattr(hp, key)}")
    for key in non_negative:
        if getattr(hp, key) < 0:
            raise ValueError(f"--{key} must be >= 0, got {getattr(hp, key)}")
    for key in ("cooldown_frac", "final_lr_frac", "window_warmup", "muon_momentum", "muon_momentum_start"):
        if not 0 <= getattr(hp, key) <= 1:
            raise ValueError(f"--{key} must be in [0, 1], got {getattr(hp, key)}")
    if not 0 <= hp.seed < 2 ** 63:  # torch.manual_seed takes a 64-bit seed
        raise ValueError(f"--seed must be in [0, 2^63), got {hp.seed}")
    if not (hp.max_steps or hp.max_tokens or hp.max_flops or hp.max_seconds):
        raise ValueError("no budget: set at least one of --max_steps, --max_tokens, --max_flops, --max_seconds")
    if hp.batch_size == 0 and not hp.batch_tokens:
        raise ValueError("--batch_size=0 derives the sequences per step from --batch_tokens: set --batch_tokens too")
    if 0 < hp.val_tokens < 2:
        raise ValueError(f"--val_tokens={hp.val_tokens} is too few; score at least 2 tokens (or 0 = all)")
    leaderboard.check_track(hp.track)
    check_record_location(hp)
    autocast_dtype(hp.precision, torch.device("cpu"))  # a bad --precision is reported now
    # a bad model setting is reported now, not after loading (a context from the data is not known yet)
    config = model_config(replace(hp, seq_len=hp.seq_len or 64), n_vocab=64, delimiter=0)
    if hp.window_warmup and not config.attention_masked:
        raise ValueError("--window_warmup grows attention windows: set --window or --short_window too")


RECORDS = ROOT / "records"


def default_out_dir(hp: Hyperparameters, date: str) -> pathlib.Path:
    return RECORDS / hp.track / f"{date}_{hp.name}"


def check_record_location(hp: Hyperparameters) -> None:
    """--name and --out_dir as leaderboard.py will take them, before any training: --name names folders
    (checkpoints/<name>/, records/<track>/<date>_<name>/), so it is a plain name; a record folder inside
    records/ must pass leaderboard.location_problem (the one rule) and sit under --track."""
    if not leaderboard.SAFE_NAME.fullmatch(hp.name):
        raise ValueError(f"--name={hp.name!r}: a run name becomes folder names, so use letters, digits, '.', '_' "
                         f"and '-' (starting with a letter or digit), e.g. --name=my-run")
    out_dir = pathlib.Path(hp.out_dir).resolve() if hp.out_dir else default_out_dir(hp, datetime.date.today().isoformat())
    records = RECORDS.resolve()
    if not out_dir.is_relative_to(records):
        return  # a trial outside records/ (runs/try): not a record, any folder will do
    where = f"--out_dir={hp.out_dir}" if hp.out_dir else f"--name={hp.name} (the record folder {out_dir.name})"
    problem = leaderboard.location_problem(records, out_dir / leaderboard.RESULTS_NAME)
    if problem:
        raise ValueError(f"{where}: leaderboard.py would refuse this record: {problem}")
    track = out_dir.relative_to(records).parts[0]
    if track != hp.track:
        raise ValueError(f"{where} is in records/{track}/ but --track={hp.track}: a record sits under its own "
                         f"track; use --out_dir=records/{hp.track}/<folder> or --track={track}")


def help_text() -> str:
    """The module docstring and the Hyperparameters block itself: the block is the documentation."""
    return (__doc__.strip() + "\n\nHyperparameters (--key=value):\n\n" + inspect.getsource(Hyperparameters) +
            "\nModel settings (--key=value, into `model`; see model.GPTConfig): " + ", ".join(MODEL_FIELDS) +
            "\n\nOn a CPU, with no model or batch setting given: " + json.dumps(DEVICE_DEFAULTS["cpu"]))


def model_config(hp: Hyperparameters, n_vocab: int, delimiter: int) -> GPTConfig:
    """The run's GPTConfig: model.build_config from the preset and hp.model (as flops.py builds it); a
    document mask splits documents at the data's delimiter token."""
    overrides = dict(hp.model)
    if overrides.get("doc_mask", PRESETS.get(hp.preset, {}).get("doc_mask", False)):
        overrides["delimiter_id"] = delimiter
    try:
        return build_config(hp.preset, n_vocab, hp.seq_len, **overrides)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{e} (from --preset={hp.preset} and the model settings {hp.model})") from None


def global_batch(hp: Hyperparameters, world_size: int) -> tuple[int, int]:
    """(grad_accum, batch_tokens). batch_tokens, when set, fixes the global batch for any world size, so a
    record reproduces on fewer GPUs with more accumulation; a setting that does not divide is an error."""
    per_micro_step = world_size * hp.batch_size * hp.seq_len
    if not hp.batch_tokens:
        return hp.grad_accum, per_micro_step * hp.grad_accum
    if hp.batch_tokens % per_micro_step:
        raise ValueError(f"--batch_tokens={hp.batch_tokens} is not a multiple of world_size * batch_size * "
                         f"seq_len = {world_size} * {hp.batch_size} * {hp.seq_len} = {per_micro_step}; "
                         f"choose a multiple of it or change --batch_size")
    grad_accum = hp.batch_tokens // per_micro_step
    if hp.grad_accum not in (1, grad_accum):
        raise ValueError(f"--grad_accum={hp.grad_accum} contradicts --batch_tokens={hp.batch_tokens}, "
                         f"which needs grad_accum={grad_accum} on {world_size} process(es); set only one of them")
    return grad_accum, hp.batch_tokens


# -----------------------------------------------------------------------------
# Data: sequences of seq_len + 1 tokens that start at a document start (the delimiter token).
#
# The global stream of windows is the same for any world size: window k of a step goes to micro-step
# k // (world * batch_size) and rank (k // batch_size) % world, so 2 processes see exactly the sequences
# that 1 process sees with grad_accum=2, and a saved data position does not depend on the world size.
# Each rank reads the tokens of its own windows only.


def next_window_start(doc_starts: np.ndarray, start: int, seq_len: int) -> int:
    """Where the window after the one at `start` begins: at the last document start in the second half of
    this window, so a document cut by the window's end is read again from its beginning (with its context)
    in the next one; when a document fills more than half a window, it continues where this window ended.
    Every token is trained on, at most half a window is read twice, and progress is at least half a window."""
    end = start + seq_len
    i = int(np.searchsorted(doc_starts, end, side="right")) - 1
    if i >= 0 and doc_starts[i] > start + seq_len // 2:
        return int(doc_starts[i])
    return end


def shard_windows(tokens: np.ndarray, delimiter: int, seq_len: int) -> list[int]:
    """The start of every training window of a shard, in order: the first at its first document start,
    each next one by next_window_start."""
    doc_starts = np.flatnonzero(tokens == delimiter)  # one pass over the shard
    start, starts = (int(doc_starts[0]) if len(doc_starts) else 0), []
    while start + seq_len + 1 <= len(tokens):
        starts.append(start)
        start = next_window_start(doc_starts, start, seq_len)
    return starts


def epoch_order(starts: list[int], shard: int, epoch: int, reshuffle: bool = True) -> list[int]:
    """The order a shard's windows are read in: as they lie in the first epoch (and always without
    reshuffle); in every later one a permutation seeded by (epoch, shard), so that data seen again (a small
    dataset, several epochs) comes in new batches rather than the same ones in the same order. The same on
    every rank and every resume."""
    if epoch == 0 or not reshuffle:
        return starts
    return [starts[i] for i in np.random.default_rng([epoch, shard]).permutation(len(starts))]


class DataLoader:
    """Batches (grad_accum, batch_size, seq_len + 1) int64 for this rank, prefetched by a background thread.
    `position` (shard, start, epoch) is where the next step's windows begin: saved in checkpoints."""

    def __init__(self, files, seq_len, batch_size, grad_accum, delimiter, rank=0, world_size=1,
                 position=None, pin_memory=False, prefetch=4, vocab_size=None, reshuffle=True):
        self.files, self.seq_len, self.batch_size, self.grad_accum = list(files), seq_len, batch_size, grad_accum
        self.reshuffle = reshuffle
        self.delimiter, self.rank, self.world_size, self.pin_memory = delimiter, rank, world_size, pin_memory
        self.vocab_size = vocab_size
        self.position = dict(position) if position else {"shard": 0, "start": -1, "epoch": 0}
        sizes = [prepare.read_shard_header(f)[1] for f in self.files]  # every shard checked now, not when reached
        if max(sizes) <= seq_len:
            raise ValueError(f"{pathlib.Path(self.files[0]).parent}: no train shard holds seq_len + 1 = "
                                     f"{seq_len + 1} tokens; lower --seq_len or prepare more data")
        self._queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="data-prefetch", daemon=True)
        self._thread.start()

    def windows(self, position):
        """(tokens, start, position after this window) for every window of the global stream, forever."""
        shard, start, epoch = position["shard"], position["start"], position["epoch"]
        while True:
            tokens = prepare.open_shard(self.files[shard])
            self.check_token_ids(tokens, self.files[shard])
            order = epoch_order(shard_windows(tokens, self.delimiter, self.seq_len), shard, epoch, self.reshuffle)
            where = {s: i for i, s in enumerate(order)}
            # a start past the shard's last window (a position saved at a shard's end) means: the next shard
            first = 0 if start < 0 else where.get(start, len(order))
            for i in range(first, len(order)):
                after = ({"shard": shard, "start": order[i + 1], "epoch": epoch} if i + 1 < len(order) else
                         {"shard": (shard + 1) % len(self.files), "start": -1,
                          "epoch": epoch + (shard + 1 == len(self.files))})
                yield tokens, order[i], after
            shard, start = shard + 1, -1
            if shard == len(self.files):
                shard, epoch = 0, epoch + 1

    def check_token_ids(self, tokens, path):
        """An id outside the model's vocabulary would index past the embedding (a crash on CUDA, garbage
        elsewhere): refused when the shard is opened, naming it."""
        if self.vocab_size is not None and len(tokens) and int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"{path}: token id {int(tokens.max())} is outside the tokenizer's vocabulary "
                             f"({self.vocab_size} ids); the shard was written with another tokenizer than "
                             f"meta.json names: re-run prepare.py for this folder")

    def _produce(self):
        try:
            stream = self.windows(self.position)
            T, B, W = self.seq_len, self.batch_size, self.world_size
            while not self._stop.is_set():
                batch = np.empty((self.grad_accum, B, T + 1), dtype=np.int64)
                for k in range(self.grad_accum * W * B):
                    tokens, start, after = next(stream)
                    micro, row = divmod(k, W * B)
                    owner, row = divmod(row, B)
                    if owner == self.rank:
                        batch[micro, row] = tokens[start:start + T + 1]
                x = torch.from_numpy(batch)
                self._put((x.pin_memory() if self.pin_memory else x, after))
        except BaseException as e:  # handed to the training loop, which raises it there
            self._put(e)

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def next_batch(self) -> torch.Tensor:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self.position = item
        return batch

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)


# -----------------------------------------------------------------------------
# Muon: SGD-momentum whose update is orthogonalised, for the hidden 2-D matrices (Keller Jordan, 2024).
# Same-shape matrices are stacked and orthogonalised together: one batched Newton-Schulz per shape instead
# of one per matrix (the launch count is what limits a small model's step on a GPU).

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic (modded-nanogpt's Muon)


def newton_schulz(G: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An approximation of U V^T for each matrix G = U S V^T of a (n, rows, cols) stack, by the quintic
    iteration X <- a X + b (X X^T) X + c (X X^T)^2 X on G / ||G||_F. The coefficients maximise the slope at
    zero, so small singular values grow fast; results land in about [0.7, 1.2] rather than exactly 1, which
    does not hurt Muon. Computed in `dtype` (default bf16 on CUDA, where it is stable, fp32 elsewhere; a run
    in bf16 on a CPU with native bf16 passes bf16, 3x faster there) and returned in it."""
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype or (torch.bfloat16 if G.is_cuda else torch.float32))
    tall = G.size(-2) > G.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values in [0, 1]
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


def zeropower_via_newtonschulz5(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """newton_schulz of one matrix, in G's dtype."""
    assert G.ndim == 2, "Newton-Schulz orthogonalises matrices"
    return newton_schulz(G[None], steps)[0].to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Muon: Nesterov momentum, then the update orthogonalised by Newton-Schulz, scaled by
    sqrt(max(1, rows / cols)) so every matrix moves by about the same RMS.

    One param group per shape; a group's gradients, momentum and updates are (n, rows, cols) stacks.
    Distributed, the optimizer reduces the gradients itself: reduce_gradients() reduce-scatters each group's
    stacked gradients (rank r receives the mean gradient of its share, matrices [r*k, (r+1)*k)), step()
    updates the momentum of that share, orthogonalises it and all-gathers the updates (bf16 on CUDA) while
    the next group is computed, so the optimizer moves as much data as one all-reduce of the gradients.
    Each rank's momentum is current for its share only; state_dict() gathers the rest first (a collective:
    every rank calls it), so a checkpoint holds every matrix's momentum and resumes on any world size."""

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0, ns_steps=5,
                 rank=0, world_size=1, ns_dtype=None):
        params = list(params)
        shapes = sorted({tuple(p.shape) for p in params}, reverse=True)
        groups = [{"params": [p for p in params if tuple(p.shape) == shape], "kind": "matrix"} for shape in shapes]
        defaults = dict(lr=lr, initial_lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps)
        super().__init__(groups, defaults)
        self.rank, self.world_size = rank, world_size
        self.ns_dtype = ns_dtype  # newton_schulz's dtype (None: its default)
        self.orthogonalise = newton_schulz  # train.py swaps in a compiled version

    def share(self, group) -> tuple[int, int]:
        """(k, padded n): each rank owns k consecutive matrices of the group, padded to world_size * k."""
        n = len(group["params"])
        k = -(-n // self.world_size)
        return k, k * self.world_size

    def momentum(self, group) -> torch.Tensor:
        """The group's momentum stack (padded n, rows, cols), kept in the state of its first matrix."""
        state = self.state[group["params"][0]]
        k, padded = self.share(group)
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros((padded, *group["params"][0].shape),
                                                   device=group["params"][0].device)
        elif state["momentum_buffer"].size(0) != padded:  # saved unpadded, or on another world size
            buf = state["momentum_buffer"][:len(group["params"])]
            state["momentum_buffer"] = torch.cat([buf, buf.new_zeros((padded - len(buf), *buf.shape[1:]))])
        return state["momentum_buffer"]

    @torch.no_grad()
    def reduce_gradients(self) -> list:
        """Start reducing every group's stacked gradient; returns, per group, (this rank's share of the mean
        gradient, the async handle or None). A matrix without a gradient contributes zeros."""
        shares = []
        for group in self.param_groups:
            k, padded = self.share(group)
            params = group["params"]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            stacked = torch.stack(grads + [torch.zeros_like(grads[0])] * (padded - len(grads)))
            if self.world_size == 1:
                shares.append((stacked, None))
                continue
            mine = torch.empty((k, *stacked.shape[1:]), dtype=stacked.dtype, device=stacked.device)
            handle = dist.reduce_scatter_tensor(mine, stacked, op=dist.ReduceOp.SUM, async_op=True)
            shares.append((mine, handle))
        return shares

    @torch.no_grad()
    def step(self, shares: list | None = None):
        """One update from the gradient shares of reduce_gradients(), waited for, averaged over the ranks and
        clipped by the caller (train.py's reduce_and_clip_gradients); None = reduce them here, unclipped."""
        if shares is None:
            shares = []
            for share, handle in self.reduce_gradients():
                if handle is not None:
                    handle.wait()
                shares.append(share / self.world_size)
        gathers = []
        for group, grad in zip(self.param_groups, shares):
            k, padded = self.share(group)
            buf = self.momentum(group)[self.rank * k:(self.rank + 1) * k]
            buf.lerp_(grad, 1 - group["momentum"])
            g = grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
            rows, cols = g.shape[-2:]
            update = self.orthogonalise(g, group["ns_steps"], self.ns_dtype) * max(1.0, rows / cols) ** 0.5
            if self.world_size == 1:
                gathers.append((update, None))
                continue
            everything = torch.empty((padded, rows, cols), dtype=update.dtype, device=update.device)
            gathers.append((everything, dist.all_gather_into_tensor(everything, update.contiguous(), async_op=True)))
        for group, (updates, handle) in zip(self.param_groups, gathers):
            if handle is not None:
                handle.wait()
            params = group["params"]
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(params, list(updates[:len(params)].to(params[0].dtype).unbind(0)), alpha=-group["lr"])

    @torch.no_grad()
    def gather_momentum(self) -> None:
        """Make every rank's momentum current for every matrix (before a checkpoint)."""
        if self.world_size == 1:
            return
        for group in self.param_groups:
            k, _ = self.share(group)
            buf = self.momentum(group)
            mine = buf[self.rank * k:(self.rank + 1) * k].clone()
            dist.all_gather_into_tensor(buf, mine)

    def state_dict(self):
        """World-size independent: every matrix's momentum, unpadded (a collective when distributed)."""
        self.gather_momentum()
        saved = super().state_dict()
        for index, group in enumerate(saved["param_groups"]):
            first = group["params"][0]
            if "momentum_buffer" in saved["state"].get(first, {}):
                n = len(group["params"])
                saved["state"][first] = {"momentum_buffer": saved["state"][first]["momentum_buffer"][:n].clone()}
        return saved


def split_parameters(model: GPT) -> dict[str, list[nn.Parameter]]:
    """Which optimizer gets which parameter, by kind: "matrix" (the 2-D matrices inside the blocks, Muon);
    "embed" (lookups, not linear maps), "head" (lm_head, its own scale; a tied embedding goes here) and
    "scalar" (all 0-D/1-D parameters), AdamW. A shared (reused) block's parameters appear once."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = {id(model.lm_head.weight)}
    groups = {"matrix": [], "embed": [], "head": [], "scalar": []}
    for name, p in model.named_parameters():  # unique parameters
        if not p.requires_grad:
            continue
        if id(p) in head:
            groups["head"].append(p)
        elif id(p) in embeddings:
            groups["embed"].append(p)
        elif p.ndim == 2:
            groups["matrix"].append(p)
        else:
            groups["scalar"].append(p)
    return groups


def build_optimizers(model: GPT, hp: Hyperparameters, rank: int, world_size: int, device: torch.device) -> list:
    """[AdamW, Muon], every param group tagged with its kind; set_hyperparameters gives them their settings."""
    groups = split_parameters(model)
    muon = Muon(groups["matrix"], rank=rank, world_size=world_size,
                ns_dtype=newton_schulz_dtype(autocast_dtype(hp.precision, device), device))
    adam_groups = [{"params": groups[kind], "kind": kind} for kind in ("embed", "head", "scalar") if groups[kind]]
    adam = torch.optim.AdamW(adam_groups, eps=1e-10, weight_decay=0.0, fused=device.type in ("cuda", "cpu"))
    set_hyperparameters([adam, muon], hp)
    return [adam, muon]


def set_hyperparameters(optimizers: list, hp: Hyperparameters) -> None:
    """This command line's learning rates, momentum, betas and weight decay, by group kind: at the start,
    and again after a resume (load_state_dict restores the saved ones)."""
    peak_lr = {"matrix": hp.matrix_lr, "embed": hp.embed_lr, "head": hp.head_lr, "scalar": hp.scalar_lr}
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"] = peak_lr[group["kind"]]
            if group["kind"] == "matrix":
                group.update(momentum=hp.muon_momentum, weight_decay=hp.weight_decay)
            else:
                group["betas"] = (hp.adam_beta1, hp.adam_beta2)
                group["weight_decay"] = hp.adam_weight_decay if group["kind"] in ("embed", "head") else 0.0


def lr_multiplier(step: int, progress: float, hp: Hyperparameters) -> float:
    """Warmup-stable-decay: linear warmup over warmup_steps, flat, then a linear decay to final_lr_frac
    over the last cooldown_frac of the run. progress in [0, 1] is the share of the budget spent."""
    warmup = (step + 1) / hp.warmup_steps if step < hp.warmup_steps else 1.0
    if hp.cooldown_frac == 0 or progress < 1 - hp.cooldown_frac:
        return warmup
    remaining = max(0.0, (1 - progress) / hp.cooldown_frac)  # 1 when the decay starts, 0 at the end
    return min(warmup, hp.final_lr_frac + (1 - hp.final_lr_frac) * remaining)


def muon_momentum(step: int, hp: Hyperparameters) -> float:
    """Muon's momentum, warmed up linearly from muon_momentum_start over muon_momentum_warmup steps."""
    if step >= hp.muon_momentum_warmup:
        return hp.muon_momentum
    frac = step / hp.muon_momentum_warmup
    return (1 - frac) * hp.muon_momentum_start + frac * hp.muon_momentum


def window_sizes(progress: float, config: GPTConfig, hp: Hyperparameters) -> tuple[int, int]:
    """(long, short) attention windows at this share of the run: growing linearly from 1/8 of the model's to
    the model's over window_warmup, in steps of 64 tokens (each change costs one small host-to-device copy)."""
    full = (config.window or config.block_size, config.short_window or config.window or config.block_size)
    if not hp.window_warmup or progress >= hp.window_warmup:
        return full
    frac = 1 / 8 + 7 / 8 * progress / hp.window_warmup
    return tuple(max(64, min(w, -(-int(frac * w) // 64) * 64)) for w in full)


def planned_steps(hp: Hyperparameters, batch_tokens: int, flops_per_step: int,
                  train_tokens: int | None = None) -> tuple[int | None, str | None]:
    """The step count the step/token/FLOP budgets and the passes cap allow (never exceeding any), and which one
    binds. The cap (max_passes over the train_tokens) is a step budget like the others, so the learning-rate
    decay completes there and a larger budget of any kind stops at the same step with the same model."""
    limits = []
    if hp.max_steps:
        limits.append((hp.max_steps, "max_steps"))
    if hp.max_tokens:
        limits.append((hp.max_tokens // batch_tokens, "max_tokens"))
    if hp.max_flops:
        limits.append((int(hp.max_flops // flops_per_step), "max_flops"))
    steps, name = min(limits) if limits else (None, None)
    if hp.max_passes and train_tokens:
        planned = steps * batch_tokens if steps else math.inf
        tokens, _ = choose_passes(train_tokens, planned, hp.max_passes)
        if tokens < planned:  # capped; a tie goes to the budget the user gave
            return max(1, int(tokens // batch_tokens)), "max_passes"
    if steps == 0:
        raise ValueError(f"--{name} allows no step: one step is {batch_tokens} tokens and "
                         f"{flops_per_step:.3e} model FLOPs; raise the budget or shrink the batch")
    return steps, name


def choose_passes(train_tokens: int, planned_tokens: float, max_passes: float) -> tuple[float, str]:
    """(tokens the run will train on, why) for a budget of planned_tokens over train_tokens of data: the budget
    as given up to max_passes passes, the cap beyond. Muennighoff et al. 2023 ("Scaling Data-Constrained Language
    Models"): up to about 4 passes are nearly as good as new data, then returns fall and turn negative, so
    compute past the cap would only memorise the data (measured here: README, "The CPU track")."""
    planned = planned_tokens / train_tokens
    if not max_passes or planned <= max_passes:
        cap = f"within the {max_passes:g}-pass cap" if max_passes else "no pass cap (--max_passes=0)"
        return planned_tokens, (f"{planned:.2f} passes over {train_tokens:,} training tokens, {cap}: the budget "
                                f"runs as given")
    return max_passes * train_tokens, (f"{planned:.2f} passes over {train_tokens:,} training tokens would memorise them (past ~4 "
                        f"passes repeated data stops helping, Muennighoff et al. 2023): capped at --max_passes="
                        f"{max_passes:g}, the schedule completes there and a larger budget stops at the same step")


def story_context(doc_lengths: np.ndarray, percentile: float = 95, shortest: int = 64, longest: int = 2048) -> int:
    """The context that holds a whole story with its prompt: the given percentile of the documents' lengths
    in tokens (delimiter included), rounded up to a power of two, in [shortest, longest]."""
    if not len(doc_lengths):
        return shortest
    need = float(np.percentile(doc_lengths, percentile))
    return int(min(longest, max(shortest, 2 ** math.ceil(math.log2(max(need, 1))))))


def document_lengths(path, delimiter: int) -> np.ndarray:
    """The token length of every document of a shard that starts at a delimiter, the delimiter included."""
    tokens = prepare.open_shard(path)
    starts = np.flatnonzero(tokens == delimiter)
    return np.diff(np.append(starts, len(tokens)))


def settle_data_settings(hp: Hyperparameters, data: "Data", world_size: int) -> Hyperparameters:
    """The settings that come from the data: seq_len=0 becomes story_context of the first train shard's
    documents, batch_size=0 the sequences that make batch_tokens on this world size."""
    seq_len = hp.seq_len or story_context(document_lengths(data.train_files[0], data.delimiter))
    batch_size = hp.batch_size or max(1, hp.batch_tokens // (world_size * seq_len))
    return replace(hp, seq_len=seq_len, batch_size=batch_size)


def schedule_progress(step: int, total_steps: int | None, train_seconds: float, hp: Hyperparameters) -> float:
    """The share of the budget spent: of the steps, or of the seconds when the run is timed (whichever is further)."""
    by_steps = step / total_steps if total_steps else 0.0
    by_time = train_seconds / hp.max_seconds if hp.max_seconds else 0.0
    return min(1.0, max(by_steps, by_time))


MEASURED_PEAKS: dict[str, float] = {}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there a bf16 matmul runs several
    times faster than fp32; elsewhere oneDNN emulates it, slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def has_native_bf16(device: torch.device) -> bool:
    """Whether this GPU or CPU multiplies bf16 in hardware (MPS: no)."""
    return cuda_has_native_bf16(device) if device.type == "cuda" else device.type == "cpu" and cpu_has_native_bf16()


def autocast_dtype(precision: str, device: torch.device, native_bf16: bool | None = None) -> torch.dtype | None:
    """The dtype the model runs in under autocast (None = fp32, no autocast), for --precision: "auto" is bf16
    on a GPU or CPU with native bf16, fp32 elsewhere (MPS and GPUs before Ampere included: fp16 with a loss
    scaler is not built). native_bf16: what the device can do (None: ask it)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"--precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "fp32" or device.type not in ("cuda", "cpu"):
        return None
    if native_bf16 is None:
        native_bf16 = has_native_bf16(device)
    if precision == "bf16" and device.type == "cuda" and not native_bf16:
        raise ValueError("--precision=bf16: this GPU has no native bf16 (compute capability below 8.0), where "
                         "it is emulated, slower than fp32; use --precision=auto (fp32 here) or --precision=fp32")
    return torch.bfloat16 if precision == "bf16" or native_bf16 else None


def newton_schulz_dtype(amp_dtype: torch.dtype | None, device: torch.device,
                        native_bf16: bool | None = None) -> torch.dtype:
    """Muon's Newton-Schulz dtype: the run's autocast dtype; in an fp32 run bf16 on a GPU with native bf16
    (stable there, at the tensor cores' bf16 rate), fp32 everywhere else. native_bf16: None = ask the GPU."""
    if amp_dtype is not None:
        return amp_dtype
    if device.type != "cuda":
        return torch.float32
    native = cuda_has_native_bf16(device) if native_bf16 is None else native_bf16
    return torch.bfloat16 if native else torch.float32


@dataclass(frozen=True)
class DevicePath:
    """What a run executes on its device, chosen by device_path from what the device can do."""
    amp_dtype: torch.dtype | None  # autocast dtype (None = fp32)
    compile: bool                  # torch.compile the model and Muon
    attention: str                 # how windows and document masks run: "flex_attention" or "dense masks"
    notes: tuple = ()              # each choice that differs from the GPU default, with its reason

    def describe(self) -> str:
        precision = {torch.bfloat16: "bf16 autocast"}.get(self.amp_dtype, "fp32")
        return "; ".join((f"{precision}, masked attention {self.attention}, torch.compile "
                          f"{'on' if self.compile else 'off'}", *self.notes))


def device_path(precision: str, compile: bool, device_type: str, native_bf16: bool, triton: bool,
                flex: bool) -> DevicePath:
    """The precision, compilation and attention a run gets from --precision/--compile and what its device can
    do (native_bf16; triton: Triton generates code for it, so torch.compile and flex_attention work on a GPU;
    flex: this torch has flex_attention). A GPU without them, MPS, or a CPU get a path that works, and say so."""
    amp_dtype = autocast_dtype(precision, torch.device(device_type), native_bf16)
    notes = []
    if precision == "auto" and amp_dtype is None:
        notes.append({"cuda": "fp32: this GPU has no native bf16 (compute capability below 8.0)",
                      "mps": "fp32: autocast is not used on MPS"}.get(device_type, "fp32: this CPU has no native bf16"))
    compiles = device_type == "cpu" or (device_type == "cuda" and triton)
    if compile and not compiles:
        notes.append("torch.compile off: " + ("Triton does not run on this GPU (compute capability below 7.0, "
                                              "or Triton not installed)" if device_type == "cuda" else
                                              f"not used on {device_type}"))
    attention = "flex_attention" if device_type == "cuda" and triton and flex else "dense masks"
    if device_type == "cuda" and attention != "flex_attention":
        notes.append("windows and document masks as dense SDPA masks: flex_attention needs Triton on this GPU")
    return DevicePath(amp_dtype=amp_dtype, compile=compile and compiles, attention=attention, notes=tuple(notes))


def run_device_path(hp: Hyperparameters, device: torch.device) -> DevicePath:
    """device_path for this run's device, asking it what it can do."""
    return device_path(hp.precision, hp.compile, device.type, has_native_bf16(device),
                       model_lib.triton_runs_on(device),
                       model_lib.flex_attention is not None)


def peak_flops_per_device(device: torch.device, name: str,
                          dtype: torch.dtype | None = torch.bfloat16) -> tuple[float, str]:
    """(peak FLOP/s, "datasheet" | "measured"): flops.py's figure for a known GPU in the dtype the run computes
    in (bf16, or TF32 for fp32), else a measured matmul peak in that dtype (CPUs, consumer cards), which the
    record flags. Measured on rank 0 and shared, so every rank (and the record) uses one number."""
    peak, source = (None, "unknown")
    if device.type == "cuda":
        peak, source = flops.device_peak_flops(name, dtype)
    if peak is None:
        key = f"{device} {dtype}"
        if not dist.is_initialized() or dist.get_rank() == 0:
            if key not in MEASURED_PEAKS:  # about a second: once per process
                MEASURED_PEAKS[key] = flops.measure_matmul_peak(device=str(device), dtype=dtype or torch.float32)
            peak = MEASURED_PEAKS[key]
        if dist.is_initialized():
            shared = [peak]
            dist.broadcast_object_list(shared, src=0)
            peak = shared[0]
        source = "measured"
    return float(peak), source


# -----------------------------------------------------------------------------
# The run: what it is made of (Run, fixed at the start) and where it stands (RunState, saved in checkpoints)


@dataclass
class RunState:
    """Where a run stands. Saved in every checkpoint as `progress`, so a resume continues exactly, and
    compared on resume so a run is never continued on other data, batch or hardware."""
    run_id: str                  # a checkpoint belongs to the run that wrote it; only its own are pruned
    date: str                    # the record's date: the day the run started
    out_dir: str
    batch_tokens: int
    hardware: str                # "N x device": a record's hardware FLOPs assume one kind of hardware
    data_fingerprint: str        # sha256 of the data folder's meta.json
    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    position: dict | None = None  # the data loader's position of the next step
    planned_passes: float | None = None  # over the training tokens, as planned at the start (a timed run: at its first log)
    best_step: int | None = None  # the validation with the lowest BPB so far, kept in ckpt_dir/best.pt
    best_val_bpb: float | None = None
    stale_validations: int = 0   # validations since the best one (--patience)
    last_check: list | None = None  # [val bpb, mean train loss before it] of the last validation: the overfit warning


@dataclass
class Data:
    """The prepared data folder: the tokenizer it was made with, the train shards and the validation set."""
    meta: dict
    fingerprint: str
    tokenizer: dict
    enc: object
    delimiter: int
    token_bytes: torch.Tensor
    train_files: list
    train_tokens: int            # in all train shards: the passes are counted against it
    val_tokens: np.ndarray
    val_fingerprint: str
    eval_id: str


@dataclass
class Run:
    """What a run is made of, fixed once it starts; the functions below take it with the RunState."""
    hp: Hyperparameters
    rank: int
    world_size: int
    device: torch.device
    data: Data
    config: GPTConfig
    raw_model: GPT               # the weights (checkpoints, validation, counting)
    model: nn.Module             # raw_model, compiled (unless --compile=0)
    optimizers: list
    loader: "DataLoader"
    grad_accum: int
    total_steps: int | None
    step_budget: str | None
    flops_per_step: int
    peak: float
    peak_source: str
    device_label: str
    ckpt_dir: pathlib.Path
    log: "RunLog"
    digests: dict
    software: dict
    params: dict
    clock: "Clock" = None
    wandb_run: object = None
    own_checkpoints: list = field(default_factory=list)  # this run's step_*.pt, oldest first
    pending: list = field(default_factory=list)  # per-step (loss, grad norm) on the device, read at the next log
    windows: tuple = ()          # the attention windows set by window_warmup, so they are set only when they change
    amp_dtype: torch.dtype | None = None  # autocast_dtype(hp.precision, device): bf16, or None for fp32
    host_group: object = None    # several processes with --max_seconds: a gloo group for seconds_so_far
    path: DevicePath | None = None  # the precision, compilation and attention chosen for the device

    @property
    def master(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


class RunLog:
    """train.log (rank 0 writes): every line goes to the file, and to the console unless console=False."""

    def __init__(self, path: pathlib.Path | None, append: bool):
        self.file = open(path, "a" if append else "w", encoding="utf-8") if path else None

    def write(self, text: str) -> None:
        if self.file:
            self.file.write(text)
            self.file.flush()

    def line(self, text: str, console: bool = True) -> None:
        if self.file:
            self.write(text + "\n")
            if console:
                print(text, flush=True)

    def close(self) -> None:
        if self.file:
            self.file.close()


class TrainingDiverged(RuntimeError):
    """A NaN/inf loss, gradient or weight; the message names the step and the last good checkpoint."""


# -----------------------------------------------------------------------------
# Checkpoints: step_NNNNNN.pt in ckpt_dir, each holding the weights, the optimizers, the RNG states and the
# RunState. Written atomically (model.save_checkpoint); only finite weights are ever written.


def checkpoint_path(ckpt_dir: pathlib.Path, step: int) -> pathlib.Path:
    return ckpt_dir / f"step_{step:06d}.pt"


def checkpoints_by_step(ckpt_dir: pathlib.Path) -> list[pathlib.Path]:
    """step_*.pt files, oldest first: by step number, not by name (step_1000000 sorts before step_999999)."""
    found = ckpt_dir.glob("step_*.pt") if ckpt_dir.is_dir() else []
    return sorted((p for p in found if p.stem[len("step_"):].isdigit()), key=lambda p: int(p.stem[len("step_"):]))


def newest_readable_checkpoint(ckpt_dir: pathlib.Path) -> tuple[pathlib.Path, dict] | None:
    """The newest checkpoint that loads; a truncated or empty one (a crash, a full disk) is skipped with a
    warning and the one before it is used."""
    for path in reversed(checkpoints_by_step(ckpt_dir)):
        try:
            return path, load_checkpoint(path, map_location="cpu")
        except ValueError as e:
            print(f"warning: skipping {path}: {e}", file=sys.stderr)
    return None


def checkpoint_run_id(path: pathlib.Path) -> str | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["progress"]["run_id"]
    except Exception:  # unreadable, or written before checkpoints carried a run id: not this run's
        return None


def rng_states(device: torch.device) -> dict:
    states = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate((states["python_version"], tuple(states["python"]), None))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def weights_are_finite(model: nn.Module) -> bool:
    """One device reduction over every parameter (a host sync: called only before a checkpoint)."""
    return bool(torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all())


def save_state(run: Run, state: RunState, stop: "StopRequested") -> pathlib.Path:
    """Write the checkpoint of state.step (rank 0; the others wait) and prune this run's older ones. A model
    whose weights are no longer finite is never saved: the run stops naming the last good checkpoint."""
    path = checkpoint_path(run.ckpt_dir, state.step)
    if not weights_are_finite(run.raw_model):
        last = run.own_checkpoints[-1] if run.own_checkpoints else "none: none was written yet"
        raise diverged(run, f"the weights are not finite after step {state.step}; not checkpointed. The last "
                            f"good checkpoint is {last}; lower the learning rates and resume with --resume=1")
    optimizer_states = [opt.state_dict() for opt in run.optimizers]  # every rank: Muon gathers its momentum
    if run.master:
        with stop.deferred():  # a Ctrl-C during the write waits for it: never half a checkpoint
            try:
                save_checkpoint(path, run.raw_model, run.config, run.data.tokenizer, state.step,
                                optimizers=optimizer_states, rng=rng_states(run.device),
                                data_state=dict(state.position or {}), hparams=asdict(run.hp),
                                code_sha256=run.digests, progress=asdict(state))
            except OSError as e:  # a full disk, a quota: the earlier checkpoints are untouched (pruned only after)
                last = run.own_checkpoints[-1] if run.own_checkpoints else "none: none was written yet"
                raise ValueError(f"cannot write the checkpoint of step {state.step} to {path} ({e.strerror or e}); "
                                 f"the last good checkpoint is {last}: free space in {run.ckpt_dir} (or pass "
                                 f"another --ckpt_dir) and continue with --resume=1") from None
    if path not in run.own_checkpoints:  # every rank keeps the list, so all agree on what was saved
        run.own_checkpoints.append(path)
    for old in run.own_checkpoints[:-run.hp.keep_checkpoints]:
        if run.master:
            old.unlink(missing_ok=True)
    del run.own_checkpoints[:-run.hp.keep_checkpoints]
    if run.world_size > 1:
        dist.barrier()  # the other ranks wait here, not inside their next timed step
    return path


def load_state(run: Run, ckpt: dict, state: RunState) -> None:
    """Restore weights, optimizers (then this command line's settings), RNG states, and into `state` (made
    from the checkpoint's progress) the data position."""
    run.raw_model.load_state_dict(ckpt["model"])
    for opt, saved in zip(run.optimizers, ckpt["optimizers"]):
        opt.load_state_dict(saved)
    set_hyperparameters(run.optimizers, run.hp)
    restore_rng_states(ckpt["rng"], run.device)
    state.position = ckpt["data_state"] or None


def check_resume_matches(ckpt: dict, path: pathlib.Path, config: GPTConfig, data: Data, batch_tokens: int,
                         hardware: str, reshuffle: bool) -> None:
    """A resumed run must keep the model, the tokenizer and data (or the saved data position points into
    other shards), the global batch (or the training changes), the epoch order (--reshuffle: the saved
    position is a place in that order, so another order reads some windows twice and skips others) and the
    hardware (a record's hardware FLOPs are train_seconds x devices x one device's peak)."""
    progress = ckpt.get("progress") or {}
    saved_reshuffle = (ckpt.get("hparams") or {}).get("reshuffle", True)  # before the flag: always reshuffled
    if saved_reshuffle != reshuffle:
        raise ValueError(f"{path} was trained with --reshuffle={int(saved_reshuffle)}, this is --reshuffle="
                         f"{int(reshuffle)}: its data position is a place in that epoch order; resume with "
                         f"--reshuffle={int(saved_reshuffle)}")
    saved_config = {k: v for k, v in ckpt["config"].items() if k != "use_kernels"}
    if saved_config != asdict(config):
        raise ValueError(f"{path} was trained with the model config {saved_config}, these settings build "
                         f"{asdict(config)}; resume with the same --preset, model settings and --seq_len")
    if ckpt.get("tokenizer") != data.tokenizer or progress.get("data_fingerprint") != data.fingerprint:
        raise ValueError(f"{path} was trained on other data or another tokenizer than --data_dir (its meta.json "
                         f"fingerprint {str(progress.get('data_fingerprint'))[:12]}, this folder's "
                         f"{data.fingerprint[:12]}); resume with the run's own --data_dir")
    if progress.get("batch_tokens") != batch_tokens:
        raise ValueError(f"the run in {path.parent} used {progress.get('batch_tokens')} tokens per step, these "
                         f"settings give {batch_tokens:,}; resume with --batch_tokens={progress.get('batch_tokens')}")
    if progress.get("hardware") != hardware and progress.get("train_seconds", 0) > 0:
        raise ValueError(f"the run in {path.parent} trained on {progress.get('hardware')}, this is {hardware}; a "
                         f"record's hardware FLOPs assume one kind of hardware, so resume on the same devices")


# -----------------------------------------------------------------------------
# The record: results.json in leaderboard.py's format (its SCHEMA), written by leaderboard.write_results


def build_record(run: Run, state: RunState, final_eval: dict, stopped_by: str, target_seconds) -> dict:
    hp = run.hp
    target = None
    if hp.target_bpb:
        target = {"metric": "bpb", "value": hp.target_bpb, "reached": target_seconds is not None,
                  "seconds": target_seconds}
    return {
        "schema": leaderboard.SCHEMA,
        "name": hp.name,
        "track": hp.track,
        "date": state.date,
        "description": hp.description,
        "sweep": hp.sweep or None,
        "author": {"name": hp.author, "affiliation": hp.affiliation, "url": hp.url},
        "code": {"sha256": run.digests, "git_commit": leaderboard.git_commit()},
        "data": {"dataset": run.data.meta.get("dataset"), "tokenizer": run.data.tokenizer["name"],
                 "vocab_size": run.data.enc.n_vocab, "fingerprint": run.data.fingerprint},
        "model": asdict(run.config),
        "params": {"counted": run.params["counted"], "unique": run.params["unique"],
                   "embedding": run.params["embedding"], "weight_class": flops.weight_class(run.params["counted"])},
        "training": {"steps": state.step, "tokens": state.tokens, "batch_tokens": state.batch_tokens,
                     "seq_len": hp.seq_len, "seed": hp.seed, "world_size": run.world_size, "stopped_by": stopped_by,
                     "passes": state.tokens / run.data.train_tokens, "planned_passes": state.planned_passes,
                     "best_step": state.best_step, "best_val_bpb": state.best_val_bpb},
        "compute": compute_block(run, state),
        "eval": {run.data.eval_id: {k: final_eval[k] for k in eval_bpb.RESULT_KEYS}},
        "target": target,
        "judge": None,
        "software": run.software,
    }


def compute_block(run: Run, state: RunState) -> dict:
    """The compute fields, by flops.py, so leaderboard.py's recomputation (3 x forward FLOPs per token x
    tokens; seconds x devices x peak) gives the same numbers."""
    model_flops = flops.model_flops(run.config, run.hp.seq_len, state.tokens)
    hardware_flops = flops.hardware_flops(state.train_seconds, run.world_size, run.peak)
    return {"flops_convention": "marin", "flops_per_token": flops.forward_flops_per_token(run.config, run.hp.seq_len),
            "model_flops": model_flops, "hardware_flops": hardware_flops,
            "mfu": flops.mfu(model_flops, hardware_flops) if hardware_flops else 0.0,
            "device": run.device_label, "device_count": run.world_size, "peak_flops_per_device": run.peak,
            "peak_flops_source": run.peak_source, "train_seconds": state.train_seconds,
            "precision": "bf16" if run.amp_dtype is torch.bfloat16 else "fp32"}


# -----------------------------------------------------------------------------
# Training


class StopRequested:
    """Ctrl-C (or SIGTERM) asks for a clean stop at the end of the step: a checkpoint is written there.
    A second Ctrl-C interrupts at once, except inside deferred() (a checkpoint write), which it lets finish."""

    def __init__(self):
        self.requested = False
        self.interrupt_pending = False
        self._deferring = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.requested:
            self.requested = True
            print(f"\nstop requested (signal {signum}): finishing this step and writing a checkpoint", flush=True)
        elif self._deferring:
            self.interrupt_pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.interrupt_pending:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def diverged(run: Run, message: str) -> TrainingDiverged:
    run.log.line(message, console=False)
    return TrainingDiverged(message)


def validate(run: Run, state: RunState) -> dict:
    """Validation BPB by eval_bpb.evaluate_bpb (the one definition), logged; not timed."""
    # on a CPU the eager model: compiling each new eval batch shape would cost more than it saves
    model = run.model if run.device.type == "cuda" else run.raw_model
    result = eval_bpb.evaluate_bpb(model, run.data.val_tokens, run.data.token_bytes, run.hp.seq_len,
                                   run.hp.batch_size, run.device, amp_dtype=run.amp_dtype)
    result["fingerprint"] = run.data.val_fingerprint
    if not math.isfinite(result["bpb"]):  # a record must never carry NaN (it is not even valid JSON)
        raise diverged(run, f"the validation BPB is {result['bpb']} at step {state.step}; stopped, no record "
                            f"written (checkpoints in {run.ckpt_dir}); lower the learning rates")
    run.log.line(f"step {state.step} val bpb {result['bpb']:.6f} loss {result['loss']:.6f} ({result['tokens']:,} "
                 f"tokens, {result['bytes']:,} bytes)")
    if run.wandb_run is not None:
        run.wandb_run.log({"val/bpb": result["bpb"], "val/loss": result["loss"]}, step=state.step)
    return result


def should_stop(run: Run, state: RunState) -> str | None:
    """The budget that ends the run before the next step, if any (target_bpb is checked at validation)."""
    if run.total_steps is not None and state.step >= run.total_steps:
        return run.step_budget
    if run.hp.max_seconds and seconds_so_far(run, state) >= run.hp.max_seconds:
        return "max_seconds"
    return None


def seconds_so_far(run: Run, state: RunState) -> float:
    """The training seconds up to now: state.train_seconds (agreed at the last logged step) and what this
    rank's clock has counted since, read every step, so a time budget stops the run within a step of it
    rather than at the next logged step. The host's clock, never a device sync: on CUDA the device may
    still be running the steps the host queued ahead (the final figure is measured after a sync). Several
    processes agree on the largest reading in a host-side all-reduce (gloo, no device sync), so all stop
    at the same step."""
    seconds = state.train_seconds + run.clock.elapsed()
    if run.host_group is not None:
        agreed = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX, group=run.host_group)
        seconds = agreed.tolist()[0]
    return seconds


class Clock:
    """Training seconds, read only at the host syncs the run makes anyway (a logged step, a validation, a
    checkpoint), so that a step that does not log never waits for the device. pause() before work that is
    not training (it syncs); the next step restarts the clock. Seconds are counted in the run's time when
    the ranks have agreed on them: at the next logged step (take) or at the end."""

    def __init__(self, device: torch.device):
        self.device, self.started, self.unreported = device, None, 0.0

    def run(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def lap(self) -> float:
        """Right after a host sync: the seconds since the last lap, kept for the next take()."""
        if self.started is None:
            return 0.0
        now = time.perf_counter()
        seconds, self.started = now - self.started, now
        self.unreported += seconds
        return seconds

    def pause(self) -> None:
        if self.started is not None:
            common.synchronize(self.device)
            self.unreported += time.perf_counter() - self.started
            self.started = None

    def take(self) -> float:
        seconds, self.unreported = self.unreported, 0.0
        return seconds

    def elapsed(self) -> float:
        """The seconds not yet taken, by the host's clock now (no sync: a budget check between syncs)."""
        running = time.perf_counter() - self.started if self.started is not None else 0.0
        return self.unreported + running


def reduce_and_clip_gradients(run: Run) -> tuple[list, torch.Tensor]:
    """Average every gradient over the ranks (the optimizers reduce them: AdamW's in one flat all-reduce,
    Muon's reduce-scattered by shape, its share of the update all-gathered in its step) and clip them by
    the global norm. Returns Muon's gradient shares and the norm, a device tensor: no host sync."""
    adam, muon = run.optimizers
    adam_grads = [p.grad for group in adam.param_groups for p in group["params"] if p.grad is not None]
    shares = muon.reduce_gradients()  # started first: the largest transfers
    if run.world_size > 1 and adam_grads:
        flat = torch._utils._flatten_dense_tensors(adam_grads)
        dist.all_reduce(flat)
        torch._foreach_copy_(adam_grads, torch._utils._unflatten_dense_tensors(flat, adam_grads))
    muon_grads = []
    for share, handle in shares:
        if handle is not None:
            handle.wait()
        muon_grads.append(share)
    if run.world_size > 1:
        torch._foreach_div_(adam_grads + muon_grads, run.world_size)
    # the global norm: AdamW's gradients are whole on every rank, Muon's shares are disjoint (padding is zero)
    muon_sq = torch.stack(torch._foreach_norm(muon_grads)).square().sum() if muon_grads else torch.zeros((), device=run.device)
    if run.world_size > 1:
        dist.all_reduce(muon_sq)
    adam_sq = torch.stack(torch._foreach_norm(adam_grads)).square().sum() if adam_grads else torch.zeros_like(muon_sq)
    norm = (adam_sq.float() + muon_sq.float()).sqrt()
    if run.hp.grad_clip:
        coef = (run.hp.grad_clip / (norm + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s rule
        torch._foreach_mul_(adam_grads + muon_grads, coef)
    return muon_grads, norm


def train_step(run: Run, state: RunState) -> None:
    """One optimizer step: grad_accum micro-steps, the gradients reduced and clipped, Muon + AdamW. Advances
    `state`; the step's loss and gradient norm stay on the device until the next logged step reads them."""
    hp, device = run.hp, run.device
    run.clock.run()
    progress = schedule_progress(state.step, run.total_steps, state.train_seconds, hp)
    multiplier, momentum = lr_multiplier(state.step, progress, hp), muon_momentum(state.step, hp)
    for opt in run.optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
            if group["kind"] == "matrix":
                group["momentum"] = momentum
    if hp.window_warmup:
        windows = window_sizes(progress, run.config, hp)
        if windows != run.windows:
            run.raw_model.set_windows(*windows)
            run.windows = windows
    batch = run.loader.next_batch().to(device, non_blocking=True)
    loss_sum = torch.zeros((), device=device)
    for micro in range(run.grad_accum):
        with run.autocast():
            loss = run.model(batch[micro, :, :-1], batch[micro, :, 1:])
        (loss / run.grad_accum).backward()
        loss_sum += loss.detach().float()
    muon_grads, norm = reduce_and_clip_gradients(run)
    adam, muon = run.optimizers
    adam.step()
    muon.step(muon_grads)
    run.raw_model.zero_grad(set_to_none=True)
    run.pending.append(torch.stack([loss_sum / run.grad_accum, norm]))
    state.step += 1
    state.tokens += state.batch_tokens
    state.position = dict(run.loader.position)


def read_pending(run: Run, state: RunState, stop: StopRequested) -> dict:
    """The one host sync of a logged step: every step's (loss, grad norm) since the last log, any rank's stop
    request and the seconds measured up to the previous sync, agreed by all ranks in one all-reduce. Checks
    that the losses and norms are finite, naming the first bad step."""
    steps = len(run.pending)
    local = torch.cat([torch.stack(run.pending).flatten(), torch.zeros(2, device=run.device)])
    local[-2] = float(stop.requested)
    local[-1] = run.clock.take()
    if run.world_size > 1:
        dist.all_reduce(local)  # sums: the losses and seconds are averaged below, the stop flags counted
    values = local.tolist()
    interval = run.clock.lap()  # this interval, measured after the sync: agreed at the next log
    run.pending.clear()
    losses = [v / run.world_size for v in values[0:2 * steps:2]]
    norms = [v / run.world_size for v in values[1:2 * steps:2]]
    first = state.step - steps + 1
    for i, (loss, norm) in enumerate(zip(losses, norms)):
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", norm)
            last = run.own_checkpoints[-1] if run.own_checkpoints else "none: none was written yet"
            raise diverged(run, f"the {what} is {value} at step {first + i}; stopped. The last good checkpoint is "
                                f"{last}; lower the learning rates and resume with --resume=1")
    state.train_seconds += values[-1] / run.world_size
    return {"losses": losses, "interval": interval, "interrupted": values[-2] > 0, "steps": steps}


def finish_clock(run: Run, state: RunState) -> None:
    """Count the seconds not yet agreed (the last interval) into the run's time."""
    run.clock.pause()
    seconds = torch.full((), run.clock.take(), dtype=torch.float64, device=run.device)
    if run.world_size > 1:
        dist.all_reduce(seconds)
    state.train_seconds += seconds.item() / run.world_size


def log_step(run: Run, state: RunState, stats: dict) -> None:
    """One line for the steps since the last log: the last loss, and the speed of the interval on this rank."""
    dt = max(stats["interval"], 1e-9)
    step_mfu = stats["steps"] * run.flops_per_step / (dt * run.world_size * run.peak)
    total = f"/{run.total_steps}" if run.total_steps else ""
    multiplier = run.optimizers[1].param_groups[0]["lr"] / run.optimizers[1].param_groups[0]["initial_lr"] \
        if run.optimizers[1].param_groups else 1.0
    run.log.line(f"step {state.step}{total} loss {stats['losses'][-1]:.6f} lr {run.hp.matrix_lr * multiplier:.4e} "
                 f"tokens {state.tokens} passes {state.tokens / run.data.train_tokens:.2f} "
                 f"ms/step {dt * 1000 / stats['steps']:.1f} "
                 f"tok/s {stats['steps'] * state.batch_tokens / dt:.0f} mfu {100 * step_mfu:.2f}%")
    if run.wandb_run is not None:
        run.wandb_run.log({"train/loss": stats["losses"][-1], "lr_multiplier": multiplier, "tokens": state.tokens,
                           "tokens_per_s": stats["steps"] * state.batch_tokens / dt, "mfu": step_mfu}, step=state.step)


def planned_tokens(run: Run, state: RunState, stats: dict) -> float:
    """The tokens a timed run will reach: its other budgets, or its seconds at the speed of the steps just
    measured (after the warm-up), whichever comes first."""
    uncapped, _ = planned_steps(replace(run.hp, max_passes=0), state.batch_tokens, run.flops_per_step)
    tokens_per_second = stats["steps"] * state.batch_tokens / max(stats["interval"], 1e-9)
    by_time = state.tokens + tokens_per_second * max(0.0, run.hp.max_seconds - state.train_seconds)
    return min(by_time, uncapped * state.batch_tokens) if uncapped else by_time


def log_plan(run: Run, state: RunState, tokens: float) -> None:
    """The one line that says what the run will do with its data, and why (choose_passes)."""
    state.planned_passes = tokens / run.data.train_tokens
    _, why = choose_passes(run.data.train_tokens, tokens, run.hp.max_passes)
    run.log.line(f"plan: {tokens:,.0f} tokens = {why}")


def best_path(run: Run) -> pathlib.Path:
    return run.ckpt_dir / "best.pt"


def check_validation(run: Run, state: RunState, bpb: float, train_losses: list) -> str | None:
    """After a validation: keep the best one (its weights in best.pt, its step and BPB in the record), warn
    when validation worsens while the training loss falls (the model memorises its data), and return
    "patience" when --patience validations in a row brought no new best."""
    loss = sum(train_losses) / len(train_losses) if train_losses else None
    before = state.last_check
    if before and before[1] is not None and loss is not None and bpb > before[0] and loss < before[1]:
        run.log.line(f"warning: val bpb rose {before[0]:.4f} -> {bpb:.4f} while the training loss fell "
                     f"{before[1]:.4f} -> {loss:.4f}, at {state.tokens / run.data.train_tokens:.2f} passes over the "
                     f"data: the model is memorising it; the best validation is step {state.best_step} "
                     f"({best_path(run)})")
    state.last_check = [bpb, loss]
    if state.best_val_bpb is None or bpb < state.best_val_bpb:
        state.best_step, state.best_val_bpb, state.stale_validations = state.step, bpb, 0
        if run.master:
            save_checkpoint(best_path(run), run.raw_model, run.config, run.data.tokenizer, state.step,
                            hparams=asdict(run.hp), code_sha256=run.digests, progress=asdict(state))
        return None
    state.stale_validations += 1
    if run.hp.patience and state.stale_validations >= run.hp.patience:
        run.log.line(f"early stop: {state.stale_validations} validations without a new best (--patience="
                     f"{run.hp.patience}); the best is step {state.best_step}, val bpb {state.best_val_bpb:.4f}")
        return "patience"
    return None


def due(every: int, step: int) -> bool:
    return bool(every) and step % every == 0


def train_loop(run: Run, state: RunState) -> dict:
    """Validate when due, stop at the first budget, step, log and checkpoint when due; then the final
    checkpoint, the final validation and the record."""
    hp = run.hp
    losses, validations, last_val, stopped_by, target_seconds = [], [], None, None, None
    since_val = 0  # losses[since_val:] were trained since the last validation
    with StopRequested() as stop:
        try:
            while True:
                stopped_by = should_stop(run, state)
                if stopped_by or due(hp.val_every, state.step):
                    run.clock.pause()
                    last_val = (state.step, validate(run, state))
                    validations.append({"step": state.step, **last_val[1]})
                    stopped_by = check_validation(run, state, last_val[1]["bpb"], losses[since_val:]) or stopped_by
                    since_val = len(losses)
                    if hp.target_bpb and last_val[1]["bpb"] <= hp.target_bpb and target_seconds is None:
                        target_seconds = state.train_seconds + run.clock.unreported
                        stopped_by = stopped_by or "target_bpb"
                if stopped_by:
                    break
                train_step(run, state)
                if due(hp.log_every, state.step) or state.step == run.total_steps:
                    stats = read_pending(run, state, stop)
                    log_step(run, state, stats)
                    losses += stats["losses"]
                    if state.planned_passes is None:  # a timed run: planned from its first measured steps
                        log_plan(run, state, planned_tokens(run, state, stats))
                    if stats["interrupted"]:
                        stopped_by = "interrupt"
                        break
                if due(hp.checkpoint_every, state.step):
                    run.clock.pause()
                    save_state(run, state, stop)
        finally:
            run.loader.close()
        if run.pending:  # steps since the last log (a time budget ends between logs)
            stats = read_pending(run, state, stop)
            log_step(run, state, stats)
            losses += stats["losses"]
        finish_clock(run, state)
        if target_seconds is not None:
            target_seconds = min(target_seconds, state.train_seconds)
        saved = checkpoint_path(run.ckpt_dir, state.step)
        if saved not in run.own_checkpoints:
            saved = save_state(run, state, stop)
    run.log.line(f"checkpoint {saved}")
    if stopped_by == "interrupt":
        run.log.line(f"interrupted at step {state.step}: continue with --resume=1 (no record is written for an "
                     f"unfinished run)")
        raise KeyboardInterrupt
    if last_val is None or last_val[0] != state.step:
        last_val = (state.step, validate(run, state))
        validations.append({"step": state.step, **last_val[1]})
        check_validation(run, state, last_val[1]["bpb"], losses[since_val:])
    record = build_record(run, state, last_val[1], stopped_by, target_seconds)
    if run.master:
        path = leaderboard.write_results(state.out_dir, record)
        run.log.line(f"done: {state.step} steps, {state.tokens:,} tokens in {state.train_seconds:.1f} s of training "
                     f"({state.tokens / max(state.train_seconds, 1e-9):,.0f} tokens/s, MFU "
                     f"{100 * record['compute']['mfu']:.2f}%), {record['training']['passes']:.2f} passes over the "
                     f"data, stopped by {stopped_by}, val bpb {last_val[1]['bpb']:.4f} (best {state.best_val_bpb:.4f} "
                     f"at step {state.best_step}: {best_path(run)}) -> {path}")
        if run.wandb_run is not None:
            run.wandb_run.finish()
    return {"losses": losses, "validations": validations, "record": record, "out_dir": pathlib.Path(state.out_dir),
            "checkpoint": saved}


def load_data(hp: Hyperparameters) -> Data:
    """The data folder and the tokenizer it was prepared with (a checkpoint carries the same tokenizer)."""
    data_dir = pathlib.Path(hp.data_dir)
    meta = prepare.read_meta(data_dir)
    tokenizer = prepare.tokenizer_spec(data_dir)
    enc = prepare.encoding_from_spec(tokenizer)
    token_bytes = torch.from_numpy(prepare.token_byte_lengths(enc))
    val_tokens = eval_bpb.load_eval_tokens(data_dir, enc, max_tokens=hp.val_tokens or None)
    train_files = prepare.list_shards(data_dir, "train")
    return Data(meta=meta, fingerprint=hashlib.sha256((data_dir / "meta.json").read_bytes()).hexdigest(),
                tokenizer=tokenizer, enc=enc, delimiter=prepare.delimiter_id(enc), token_bytes=token_bytes,
                train_files=train_files, train_tokens=sum(prepare.read_shard_header(f)[1] for f in train_files),
                val_tokens=val_tokens,
                val_fingerprint=eval_bpb.eval_fingerprint(val_tokens, token_bytes.numpy(), enc),
                eval_id=eval_bpb.default_eval_id(str(data_dir)))


def find_resume_checkpoint(hp: Hyperparameters, ckpt_dir: pathlib.Path) -> tuple[pathlib.Path, dict] | None:
    """The checkpoint to continue from (--resume=1), or None for a fresh run, which must not start in a
    folder holding another run's checkpoints (it would prune them, or they would shadow its own)."""
    if not hp.resume:
        others = checkpoints_by_step(ckpt_dir)
        if others:
            raise ValueError(f"{ckpt_dir} holds checkpoints of an earlier run ({others[-1].name} ...); continue it "
                             f"with --resume=1, or start this run elsewhere with another --name or --ckpt_dir")
        return None
    found = newest_readable_checkpoint(ckpt_dir)
    if found is None:
        raise ValueError(f"--resume=1 but {ckpt_dir} holds no readable step_*.pt checkpoint; run without "
                         f"--resume, or point --ckpt_dir at the run's checkpoints")
    if "progress" not in found[1] or "run_id" not in found[1]["progress"]:
        raise ValueError(f"{found[0]} was written by an older train.py (no run id); it cannot be resumed by this one")
    return found


RUN_ID_LINE = re.compile(r"^run_id ([0-9a-f]{32})$", re.M)


def logged_run_id(log_path: pathlib.Path) -> str | None:
    """The run a train.log belongs to (log_start writes its run_id line); None for none or an older log."""
    try:
        found = RUN_ID_LINE.findall(log_path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return None
    return found[-1] if found else None


def check_record_owner(out_dir: pathlib.Path, run_id: str, resumed_from: pathlib.Path | None) -> None:
    """A record folder is one run's: a fresh run never starts in a folder that holds a record, and a resumed
    run writes only into a folder that is empty or its own (its train.log names the run), never over
    another run's train.log or results.json."""
    results, log = out_dir / leaderboard.RESULTS_NAME, out_dir / "train.log"
    if resumed_from is None:
        if results.exists():
            raise ValueError(f"{out_dir} already holds a record (results.json); choose another --name or "
                             f"--out_dir, or delete it")
        return
    holds = [p.name for p in (results, log) if p.exists() and (p is results or p.stat().st_size > 0)]
    owner = logged_run_id(log)
    if holds and owner != run_id:
        whose = f"run {owner}" if owner else "a run whose train.log names no run_id"
        raise ValueError(f"{out_dir} holds the record of another run ({' and '.join(holds)} of {whose}; "
                         f"{resumed_from} belongs to run {run_id}); resuming there would overwrite it: resume "
                         f"into an empty folder with --out_dir=DIR, or into the run's own record folder")


def compile_model(hp: Hyperparameters, raw_model: GPT, muon: "Muon"):
    """torch.compile on every device (--compile=0: eager): the model (one graph, which lets the compiler
    fuse norms, activations and casts) and Muon's batched Newton-Schulz (one graph per matrix shape)."""
    if not hp.compile:
        return raw_model
    muon.orthogonalise = torch.compile(newton_schulz, dynamic=False)  # one static graph per matrix shape
    return torch.compile(raw_model)


def warm_up(run: Run) -> None:
    """Compile (torch.compile, Triton's JIT) and set up cuBLAS and SDPA before the clock starts: a forward and
    backward on random tokens (not the loader's, which would move the data position), gradients discarded,
    and Muon's Newton-Schulz on a random stack of every shape it will see."""
    if not run.hp.compile and run.device.type != "cuda":
        return
    generator = torch.Generator(device=run.device).manual_seed(0)
    tokens = torch.randint(0, run.data.enc.n_vocab, (run.hp.batch_size, run.hp.seq_len + 1), device=run.device,
                           generator=generator)
    for _ in range(2):
        with run.autocast():
            run.model(tokens[:, :-1], tokens[:, 1:]).backward()
    run.raw_model.zero_grad(set_to_none=True)
    muon = run.optimizers[1]
    with torch.no_grad():  # as in Muon.step: grad mode is part of what a compiled graph is specialised on
        for group in muon.param_groups:
            k, _ = muon.share(group)
            muon.orthogonalise(torch.randn((k, *group["params"][0].shape), device=run.device), group["ns_steps"],
                               muon.ns_dtype)
    common.synchronize(run.device)


def open_log(hp, out_dir: pathlib.Path, resumed: bool, sources: dict, digests: dict, saved_digests, master) -> RunLog:
    """train.log: a fresh run starts it with leaderboard.log_header (every source file); a resumed run appends,
    and logs the code again when it changed."""
    if not master:
        return RunLog(None, False)
    log_path = out_dir / "train.log"
    continuing = resumed and log_path.is_file() and log_path.stat().st_size > 0
    log = RunLog(log_path, append=continuing)
    if not continuing or saved_digests != digests:
        log.write(leaderboard.log_header(sources))
    return log


def log_start(run: Run, state: RunState, resumed_from) -> None:
    hp, log, params = run.hp, run.log, run.params
    for line in leaderboard.environment_lines(run.software, run.device_label, run.world_size, run.device.type == "cuda"):
        log.line(line, console=False)
    log.line(f"run_id {state.run_id}", console=False)  # whose folder this is (check_record_owner)
    log.line(f"hyperparameters {json.dumps(asdict(hp))}", console=False)
    log.line(f"model {json.dumps(asdict(run.config))}", console=False)
    if run.path is not None:
        log.line(f"device path: {run.path.describe()}")
    log.line(f"params counted {params['counted']:,} unique {params['unique']:,} embedding {params['embedding']:,} "
             f"class {flops.weight_class(params['counted'])}")
    log.line(f"batch {state.batch_tokens:,} tokens/step = {run.world_size} processes x {hp.batch_size} sequences x "
             f"{run.grad_accum} micro-steps x {hp.seq_len} tokens | {run.flops_per_step / state.batch_tokens / 3:,.0f} "
             f"forward FLOPs/token | peak {run.peak:.3e} FLOP/s/device ({run.peak_source}) | {run.device_label} x "
             f"{run.world_size}")
    steps = f"{run.total_steps} steps ({run.step_budget})" if run.total_steps else ""
    seconds = f"{hp.max_seconds:g} s" if hp.max_seconds else ""
    target = f" or val bpb <= {hp.target_bpb}" if hp.target_bpb else ""
    log.line(f"budget: {' '.join(x for x in (steps, seconds) if x)}{target}")
    if state.planned_passes is None and not hp.max_seconds:
        uncapped, _ = planned_steps(replace(hp, max_passes=0), state.batch_tokens, run.flops_per_step)
        log_plan(run, state, uncapped * state.batch_tokens)
    if resumed_from is not None:
        log.line(f"resumed from {resumed_from} at step {state.step}")


def start_wandb(hp: Hyperparameters, master: bool):
    if not (hp.wandb and master):
        return None
    try:
        import wandb
    except ImportError:
        raise ValueError("--wandb=1 but wandb is not installed; pip install wandb") from None
    return wandb.init(project=hp.wandb_project, name=hp.name, config=asdict(hp))


def set_up(hp: Hyperparameters, rank: int, world_size: int, device: torch.device, locks: contextlib.ExitStack):
    """Everything a run is made of, and its state: fresh, or restored from the newest readable checkpoint."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    data = load_data(hp)
    hp = settle_data_settings(hp, data, world_size)
    grad_accum, batch_tokens = global_batch(hp, world_size)
    ckpt_dir = pathlib.Path(hp.ckpt_dir or ROOT / "checkpoints" / hp.name)
    if rank == 0:
        locks.enter_context(common.folder_lock(ckpt_dir))
        common.remove_orphan_temp_files(ckpt_dir)
    resume = find_resume_checkpoint(hp, ckpt_dir)

    path = run_device_path(hp, device)  # what this device can run (a GPU without bf16 or Triton, MPS: printed)
    hp = replace(hp, compile=path.compile)
    torch.manual_seed(hp.seed)
    random.seed(hp.seed)
    config = model_config(hp, data.enc.n_vocab, data.delimiter)
    raw_model = GPT(config, use_kernels=hp.kernels).to(device)
    optimizers = build_optimizers(raw_model, hp, rank, world_size, device)
    model = compile_model(hp, raw_model, optimizers[1])
    flops_per_step = flops.model_flops(config, hp.seq_len, batch_tokens)
    total_steps, step_budget = planned_steps(hp, batch_tokens, flops_per_step, data.train_tokens)
    device_label = flops.device_name(device)
    amp_dtype = path.amp_dtype
    peak, peak_source = peak_flops_per_device(device, device_label, amp_dtype)
    hardware = f"{world_size} x {device_label}"
    if resume is not None:
        check_resume_matches(resume[1], resume[0], config, data, batch_tokens, hardware, hp.reshuffle)
        state = RunState(**resume[1]["progress"])
    else:
        date = datetime.date.today().isoformat()
        state = RunState(run_id=uuid.uuid4().hex, date=date, batch_tokens=batch_tokens, hardware=hardware,
                         data_fingerprint=data.fingerprint,
                         out_dir=str(default_out_dir(hp, date)))
    state.out_dir = str(hp.out_dir or state.out_dir)
    out_dir = pathlib.Path(state.out_dir)
    if rank == 0 and out_dir.resolve() != ckpt_dir.resolve():
        locks.enter_context(common.folder_lock(out_dir))
    check_record_owner(out_dir, state.run_id, resume[0] if resume else None)
    if rank == 0:
        common.remove_orphan_temp_files(out_dir)
    sources = leaderboard.project_sources()
    digests = {name: hashlib.sha256(text).hexdigest() for name, text in sources.items()}
    log = open_log(hp, out_dir, resume is not None, sources, digests,
                   resume[1].get("code_sha256") if resume else None, rank == 0)
    locks.callback(log.close)
    run = Run(hp=hp, rank=rank, world_size=world_size, device=device, data=data, config=config, raw_model=raw_model,
              model=model, optimizers=optimizers, loader=None, grad_accum=grad_accum, clock=Clock(device),
              total_steps=total_steps, step_budget=step_budget, flops_per_step=flops_per_step, peak=peak,
              peak_source=peak_source, device_label=device_label, ckpt_dir=ckpt_dir, log=log, digests=digests,
              software=leaderboard.software_versions(), params=flops.count_config_params(config), wandb_run=start_wandb(hp, rank == 0),
              amp_dtype=amp_dtype, path=path,
              host_group=dist.new_group(backend="gloo") if world_size > 1 and hp.max_seconds else None)
    if resume is not None:
        load_state(run, resume[1], state)  # state keeps this command line's --out_dir, as locked and logged above
        run.own_checkpoints = [p for p in checkpoints_by_step(ckpt_dir) if checkpoint_run_id(p) == state.run_id]
    log_start(run, state, resume[0] if resume else None)
    run.loader = DataLoader(data.train_files, hp.seq_len, hp.batch_size, grad_accum, data.delimiter, rank, world_size,
                            position=state.position, pin_memory=device.type == "cuda", vocab_size=data.enc.n_vocab,
                            reshuffle=hp.reshuffle)
    warm_up(run)
    return run, state


def train(hp: Hyperparameters) -> dict:
    """One run. Returns a summary (per-step losses, validations, the record, its folder, the last checkpoint)."""
    rank, world_size, device = common.setup_distributed(hp.device)
    try:
        with contextlib.ExitStack() as locks:  # the locks are released and the log closed however the run ends
            run, state = set_up(hp, rank, world_size, device, locks)
            return train_loop(run, state)
    finally:
        common.destroy_distributed()


def run_command(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    defaults = device_defaults(parse_flags(argv))
    if defaults:
        flags = {**{k: v for k, v in defaults.items() if k != "model"}, **defaults.get("model", {})}
        print("no model or batch setting given: the CPU track's " + " ".join(f"--{k}={v}" for k, v in flags.items()))
    try:
        train(parse_args(argv))
    except TrainingDiverged as e:
        print(f"error: train.py: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return common.run_main("train.py", run_command, argv)


if __name__ == "__main__":
    sys.exit(main())
