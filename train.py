"""
Train a GPT from scratch on prepared token shards, and write the run's record. The file participants edit.

    python train.py                                                     # defaults below: Small preset, data/tinystories
    python train.py --preset=tiny --seq_len=256 --max_seconds=300       # any hyperparameter: --key=value
    torchrun --standalone --nproc_per_node=8 train.py --batch_tokens=524288

What it does, top to bottom:
  the hyperparameters (one block, overridable with --key=value, typed, never exec'd)
  -> the data loader (prepare.py's shards; sequences start at document starts; each rank reads its own
     sequences; a background thread prefetches)
  -> Muon for the hidden 2-D matrices, AdamW for embeddings, lm_head and scalars; warmup-stable-decay
  -> the DDP training loop (bf16 autocast and torch.compile on CUDA), stopping at the first budget reached:
     max_steps / max_tokens / max_flops / max_seconds / target_bpb
  -> validation BPB with eval_bpb.evaluate_bpb (the one definition), checkpoints for exact resume
  -> the record: OUT_DIR/train.log (the source of every project file that ran, the environment, one line
     per step) and OUT_DIR/results.json (DESIGN.md's schema, FLOPs by flops.py, params by model.py).

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
import os
import pathlib
import platform
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import eval_bpb
import flops
import prepare
from model import GPT, CheckpointError, GPTConfig, count_params, load_checkpoint, parse_overrides, \
    preset_config, save_checkpoint, weight_class

ROOT = pathlib.Path(__file__).resolve().parent
RECORD_SCHEMA = "speedrun-record/1"

# -----------------------------------------------------------------------------
# Hyperparameters. `python train.py --help` prints this block; `--key=value` overrides any field.


@dataclass
class Hyperparameters:
    # data and the record
    data_dir: str = "data/tinystories"  # prepared by prepare.py: train_*.bin, val_*.bin, meta.json (gives the tokenizer)
    track: str = "tinystories"          # tinystories | tinystories-wiki | fineweb-edu | open
    name: str = "baseline"              # run name: records/<track>/<date>_<name>/ and checkpoints/<name>/
    description: str = ""               # one line for the leaderboard: what this run changes
    author: str = ""
    affiliation: str = ""
    url: str = ""
    out_dir: str = ""                   # "" = records/<track>/<YYYY-MM-DD>_<name>/
    ckpt_dir: str = ""                  # "" = checkpoints/<name>/ (git-ignored: a record never holds weights)
    device: str = "auto"                # auto | cpu | cuda | mps (torchrun: cuda:<local rank>)
    # model: a model.py preset, then these overrides (0 = the preset's value)
    preset: str = "small"               # tiny | small | medium | large | gpt2-124m (model.PRESETS)
    n_layer: int = 0
    n_head: int = 0
    n_kv_head: int = 0                  # 0 = the preset's, or n_head when n_head is given
    n_embd: int = 0
    seq_len: int = 1024                 # context length in training and validation
    # batch: global batch = world_size * batch_size * grad_accum * seq_len tokens
    batch_size: int = 32                # sequences per process per micro-step
    grad_accum: int = 1                 # micro-steps per optimizer step per process
    batch_tokens: int = 0               # >0 fixes the global batch and derives grad_accum from the world size
    # optimizers and schedule
    matrix_lr: float = 0.02             # Muon, hidden 2-D matrices
    muon_momentum: float = 0.95         # Nesterov momentum of Muon
    embed_lr: float = 0.05              # AdamW, token and value embeddings
    head_lr: float = 0.01               # AdamW, lm_head (and a tied embedding)
    scalar_lr: float = 0.02             # AdamW, norm weights, gains and other non-matrix parameters
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    weight_decay: float = 0.0           # decoupled, on the Muon matrices
    grad_clip: float = 1.0              # max global grad norm, 0 = off
    warmup_steps: int = 10              # linear warmup of every learning rate
    cooldown_frac: float = 0.4          # warmup-stable-decay: linear decay over the last fraction of the run
    final_lr_frac: float = 0.0          # learning rate at the end of the decay, as a fraction of the peak
    # budgets: the run stops at the first one reached (0 = not set). Steps, tokens and FLOPs are never exceeded.
    max_steps: int = 2000
    max_tokens: int = 0
    max_flops: float = 0.0              # model FLOPs (flops.py, Marin's convention)
    max_seconds: float = 0.0            # training seconds (warm-up and validation excluded)
    target_bpb: float = 0.0             # stop when validation BPB <= target; the time to target is recorded
    # validation, checkpoints, logging
    val_every: int = 250                # steps between validations (0 = only at the end)
    val_tokens: int = 0                 # tokens of the val shards scored each time (0 = all)
    checkpoint_every: int = 0           # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2           # older step_*.pt files are deleted
    resume: bool = False                # continue exactly from the newest checkpoint in ckpt_dir
    seed: int = 1337
    compile: bool = True                # torch.compile the model on CUDA (CPU and MPS run eager)
    kernels: bool = True                # kernels.py's fused Triton ops on CUDA (0 = plain PyTorch everywhere)
    wandb: bool = False                 # log to Weights & Biases (WANDB_MODE=offline works without an account)
    wandb_project: str = "speedrun"


class UsageError(ValueError):
    """Bad command-line input or settings; the message names the field and the fix."""


def parse_args(argv: list[str]) -> Hyperparameters:
    """--key=value overrides of the Hyperparameters block, each converted to the field's type by the
    parser model.py and flops.py use (integers may be written 1e6, never rounded)."""
    hp = Hyperparameters()
    types = {f.name: {"int": int, "float": float, "bool": bool, "str": str}[f.type] for f in fields(Hyperparameters)}
    try:
        overrides = parse_overrides(argv, types)
    except ValueError as e:
        raise UsageError(f"train.py: {e} (python train.py --help lists the keys)") from None
    for key, value in overrides.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"train.py: --{key}={value} must be a finite number")
        setattr(hp, key, value)
    check_hyperparameters(hp)
    return hp


def check_hyperparameters(hp: Hyperparameters) -> None:
    positive = ["seq_len", "batch_size", "grad_accum", "keep_checkpoints"]
    non_negative = ["n_layer", "n_head", "n_kv_head", "n_embd", "batch_tokens", "warmup_steps", "max_steps",
                    "max_tokens", "max_flops", "max_seconds", "target_bpb", "val_every", "val_tokens",
                    "checkpoint_every", "grad_clip", "weight_decay", "matrix_lr", "embed_lr", "head_lr", "scalar_lr"]
    for key in positive:
        if getattr(hp, key) <= 0:
            raise UsageError(f"train.py: --{key} must be positive, got {getattr(hp, key)}")
    for key in non_negative:
        if getattr(hp, key) < 0:
            raise UsageError(f"train.py: --{key} must be >= 0, got {getattr(hp, key)}")
    if not 0 <= hp.cooldown_frac <= 1 or not 0 <= hp.final_lr_frac <= 1:
        raise UsageError("train.py: --cooldown_frac and --final_lr_frac must be in [0, 1]")
    if not (hp.max_steps or hp.max_tokens or hp.max_flops or hp.max_seconds):
        raise UsageError("train.py: no budget: set at least one of --max_steps, --max_tokens, --max_flops, --max_seconds")
    if val_tokens_too_few(hp):
        raise UsageError(f"train.py: --val_tokens={hp.val_tokens} is too few; score at least 2 tokens (or 0 = all)")


def val_tokens_too_few(hp: Hyperparameters) -> bool:
    return 0 < hp.val_tokens < 2


def help_text() -> str:
    """The module docstring and the Hyperparameters block itself: the block is the documentation."""
    return __doc__.strip() + "\n\nHyperparameters (--key=value):\n\n" + inspect.getsource(Hyperparameters)


def global_batch(hp: Hyperparameters, world_size: int) -> tuple[int, int]:
    """(grad_accum, batch_tokens). batch_tokens, when set, fixes the global batch for any world size, so a
    record reproduces on fewer GPUs with more accumulation; a setting that does not divide is an error."""
    per_micro_step = world_size * hp.batch_size * hp.seq_len
    if not hp.batch_tokens:
        return hp.grad_accum, per_micro_step * hp.grad_accum
    if hp.batch_tokens % per_micro_step:
        raise UsageError(f"train.py: --batch_tokens={hp.batch_tokens} is not a multiple of world_size * batch_size * "
                         f"seq_len = {world_size} * {hp.batch_size} * {hp.seq_len} = {per_micro_step}; "
                         f"choose a multiple of it or change --batch_size")
    grad_accum = hp.batch_tokens // per_micro_step
    if hp.grad_accum not in (1, grad_accum):
        raise UsageError(f"train.py: --grad_accum={hp.grad_accum} contradicts --batch_tokens={hp.batch_tokens}, "
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


class DataLoader:
    """Batches (grad_accum, batch_size, seq_len + 1) int64 for this rank, prefetched by a background thread.
    `position` (shard, start, epoch) is where the next step's windows begin: saved in checkpoints."""

    def __init__(self, files, seq_len, batch_size, grad_accum, delimiter, rank=0, world_size=1,
                 position=None, pin_memory=False, prefetch=4):
        self.files, self.seq_len, self.batch_size, self.grad_accum = list(files), seq_len, batch_size, grad_accum
        self.delimiter, self.rank, self.world_size, self.pin_memory = delimiter, rank, world_size, pin_memory
        self.position = dict(position) if position else {"shard": 0, "start": -1, "epoch": 0}
        sizes = [prepare.read_shard_header(f)[1] for f in self.files]  # every shard checked now, not when reached
        if max(sizes) <= seq_len:
            raise prepare.ShardError(f"{pathlib.Path(self.files[0]).parent}: no train shard holds seq_len + 1 = "
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
            doc_starts = np.flatnonzero(tokens == self.delimiter)  # one pass over the shard
            if start < 0:
                start = int(doc_starts[0]) if len(doc_starts) else 0
            while start + self.seq_len + 1 <= len(tokens):
                following = next_window_start(doc_starts, start, self.seq_len)
                yield tokens, start, {"shard": shard, "start": following, "epoch": epoch}
                start = following
            shard, start = shard + 1, -1
            if shard == len(self.files):
                shard, epoch = 0, epoch + 1

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


def zeropower_via_newtonschulz5(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximation of U V^T for G = U S V^T, by the quintic Newton-Schulz iteration
    X <- a X + b (X X^T) X + c (X X^T)^2 X on G / ||G||_F. The coefficients (3.4445, -4.7750, 2.0315)
    maximise the slope at zero, so small singular values grow fast; the results land in about
    [0.7, 1.2] rather than exactly 1, which does not hurt Muon. bf16 on CUDA (stable here), fp32 elsewhere."""
    assert G.ndim == 2, "Newton-Schulz orthogonalises matrices"
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = G.size(0) > G.size(1)
    if tall:  # iterate on the smaller Gram matrix
        X = X.T
    X = X / (X.norm() + 1e-7)  # singular values in [0, 1]
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.T
    return X.to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Muon: Nesterov momentum, then the update orthogonalised by Newton-Schulz, scaled by
    sqrt(max(1, rows / cols)) so every matrix moves by about the same RMS.

    Distributed: every rank keeps the momentum of every matrix (its gradients are already all-reduced,
    and a full state makes checkpoints independent of the world size), but the expensive orthogonalisation
    of matrix i is done by rank i % world only; the updates are then all-gathered, so each rank applies
    the same updates. Matrices are grouped by shape so that each all-gather moves same-shaped tensors."""

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0, ns_steps=5,
                 rank=0, world_size=1):
        params = list(params)
        shapes = sorted({tuple(p.shape) for p in params}, reverse=True)
        groups = [{"params": [p for p in params if tuple(p.shape) == shape]} for shape in shapes]
        defaults = dict(lr=lr, initial_lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps)
        super().__init__(groups, defaults)
        self.rank, self.world_size = rank, world_size

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = group["params"]
            for p in params:  # momentum: cheap and elementwise, on every rank
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                state["momentum_buffer"].lerp_(p.grad, 1 - group["momentum"])
            for base in range(0, len(params), self.world_size):
                chunk = params[base:base + self.world_size]
                mine = base + self.rank
                if mine < len(params) and params[mine].grad is not None:
                    update = self.orthogonalised_update(params[mine], group)
                else:  # this rank has no matrix in the last chunk: send something of the right shape
                    update = torch.zeros_like(params[base])
                if self.world_size > 1:
                    updates = [torch.empty_like(update) for _ in range(self.world_size)]
                    dist.all_gather(updates, update.contiguous())
                else:
                    updates = [update]
                for p, u in zip(chunk, updates):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(u, alpha=-group["lr"])

    def orthogonalised_update(self, p, group):
        buf = self.state[p]["momentum_buffer"]
        g = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
        update = zeropower_via_newtonschulz5(g, steps=group["ns_steps"])
        return update * max(1.0, p.size(0) / p.size(1)) ** 0.5


def split_parameters(model: GPT) -> dict[str, list[nn.Parameter]]:
    """Which optimizer gets which parameter: Muon for the 2-D matrices inside the blocks; AdamW for the
    embeddings (they are lookups, not linear maps), lm_head (its own scale), and all 0-D/1-D parameters.
    A shared (reused) block's parameters appear once; a tied lm_head goes with the head's learning rate."""
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


def build_optimizers(model: GPT, hp: Hyperparameters, rank: int, world_size: int, device: torch.device):
    groups = split_parameters(model)
    muon = Muon(groups["matrix"], lr=hp.matrix_lr, momentum=hp.muon_momentum, weight_decay=hp.weight_decay,
                rank=rank, world_size=world_size)
    adam_groups = [{"params": groups[kind], "lr": lr, "initial_lr": lr, "name": kind}
                   for kind, lr in (("embed", hp.embed_lr), ("head", hp.head_lr), ("scalar", hp.scalar_lr))
                   if groups[kind]]
    adam = torch.optim.AdamW(adam_groups, betas=(hp.adam_beta1, hp.adam_beta2), eps=1e-10, weight_decay=0.0,
                             fused=device.type == "cuda")
    return [adam, muon]


def lr_multiplier(step: int, progress: float, hp: Hyperparameters) -> float:
    """Warmup-stable-decay: linear warmup over warmup_steps, flat, then a linear decay to final_lr_frac
    over the last cooldown_frac of the run. progress in [0, 1] is the share of the budget spent."""
    warmup = (step + 1) / hp.warmup_steps if step < hp.warmup_steps else 1.0
    if hp.cooldown_frac == 0 or progress < 1 - hp.cooldown_frac:
        return warmup
    remaining = max(0.0, (1 - progress) / hp.cooldown_frac)  # 1 when the decay starts, 0 at the end
    return min(warmup, hp.final_lr_frac + (1 - hp.final_lr_frac) * remaining)


def planned_steps(hp: Hyperparameters, batch_tokens: int, flops_per_step: int) -> tuple[int | None, str | None]:
    """The step count the step/token/FLOP budgets allow (never exceeding any), and which one binds."""
    limits = []
    if hp.max_steps:
        limits.append((hp.max_steps, "max_steps"))
    if hp.max_tokens:
        limits.append((hp.max_tokens // batch_tokens, "max_tokens"))
    if hp.max_flops:
        limits.append((int(hp.max_flops // flops_per_step), "max_flops"))
    if not limits:
        return None, None
    steps, name = min(limits)
    if steps == 0:
        raise UsageError(f"train.py: --{name} allows no step: one step is {batch_tokens} tokens and "
                         f"{flops_per_step:.3e} model FLOPs; raise the budget or shrink the batch")
    return steps, name


def schedule_progress(step: int, total_steps: int | None, train_seconds: float, hp: Hyperparameters) -> float:
    """The share of the budget spent: of the steps, or of the seconds when the run is timed (whichever is further)."""
    by_steps = step / total_steps if total_steps else 0.0
    by_time = train_seconds / hp.max_seconds if hp.max_seconds else 0.0
    return min(1.0, max(by_steps, by_time))


# -----------------------------------------------------------------------------
# The run's environment: distributed set-up, device, code, software


def setup_distributed(hp: Hyperparameters):
    """(rank, world_size, device): eval_bpb's, which joins torchrun's group (NCCL on CUDA, gloo on CPU)."""
    try:
        return eval_bpb.setup_distributed(hp.device)
    except ValueError as e:
        raise UsageError(f"train.py: --device={hp.device}: {e}") from None


def project_sources() -> dict[str, bytes]:
    """The source of every file of this repository that is running (train.py first): the modules imported
    from the repository's folder, detected rather than listed, so an added file is logged too."""
    files = {pathlib.Path(__file__).resolve()}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not os.path.isabs(path):  # some extension modules fake a relative name
            continue
        path = pathlib.Path(path).resolve()
        if path.suffix == ".py" and path.is_file() and path.is_relative_to(ROOT) and "site-packages" not in path.parts \
                and path.relative_to(ROOT).parts[0] not in ("tests", ".venv"):
            files.add(path)
    ordered = sorted(files, key=lambda p: (p.name != "train.py", str(p.relative_to(ROOT))))
    return {str(p.relative_to(ROOT)): p.read_bytes() for p in ordered}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def software_versions() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton_version}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        model_name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
                    break
        return f"cpu: {model_name} ({torch.get_num_threads()} threads per process)"
    return device.type


MEASURED_PEAKS: dict[str, float] = {}


def peak_flops_per_device(device: torch.device, name: str) -> tuple[float, str]:
    """(peak FLOP/s, "datasheet" | "measured"): the table's bf16 figure for a known GPU, else a measured
    matmul peak (CPUs, consumer cards), which the record flags. Measured on rank 0 and shared, so every
    rank (and the record) uses one number."""
    peak, source = (None, "unknown")
    if device.type == "cuda":
        peak, source = flops.device_peak_flops(name)
    if peak is None:
        dtype = torch.bfloat16 if device.type == "cuda" else None
        if not dist.is_initialized() or dist.get_rank() == 0:
            if str(device) not in MEASURED_PEAKS:  # about a second: once per process
                MEASURED_PEAKS[str(device)] = flops.measure_matmul_peak(device=str(device), dtype=dtype)
            peak = MEASURED_PEAKS[str(device)]
        if dist.is_initialized():
            shared = [peak]
            dist.broadcast_object_list(shared, src=0)
            peak = shared[0]
        source = "measured"
    return float(peak), source


# -----------------------------------------------------------------------------
# Checkpoints


def checkpoint_path(ckpt_dir: pathlib.Path, step: int) -> pathlib.Path:
    return ckpt_dir / f"step_{step:06d}.pt"


def checkpoints_by_step(ckpt_dir: pathlib.Path) -> list[pathlib.Path]:
    """step_*.pt files, oldest first: by step number, not by name (step_1000000 sorts before step_999999)."""
    found = ckpt_dir.glob("step_*.pt") if ckpt_dir.is_dir() else []
    return sorted((p for p in found if p.stem[len("step_"):].isdigit()), key=lambda p: int(p.stem[len("step_"):]))


def latest_checkpoint(ckpt_dir: pathlib.Path) -> pathlib.Path | None:
    found = checkpoints_by_step(ckpt_dir)
    return found[-1] if found else None


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


# -----------------------------------------------------------------------------
# The record


def record_header(sources: dict[str, bytes], digests: dict[str, str]) -> str:
    """train.log's beginning: the full source of every project file that ran, each under a line with its
    sha256 (the same digests results.json holds)."""
    parts = []
    for name, text in sources.items():
        parts.append(f"{'=' * 20} {name} sha256={digests[name]} {'=' * 20}\n")
        parts.append(text.decode("utf-8"))
        if not parts[-1].endswith("\n"):
            parts.append("\n")
    return "".join(parts)


def environment_lines(software: dict, device: torch.device, name: str, world_size: int) -> list[str]:
    lines = [f"{'=' * 20} environment {'=' * 20}",
             " | ".join(f"{k} {v}" for k, v in software.items()),
             f"device {name} x {world_size}",
             f"command {' '.join(sys.argv)}"]
    if device.type == "cuda":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20)
            lines += smi.stdout.rstrip().splitlines()
    return lines


def build_record(hp, run, config, params, meta, meta_fingerprint, tokenizer_name, vocab_size, eval_id, final_eval,
                 target, compute, software, digests) -> dict:
    """results.json, every field of DESIGN.md's schema speedrun-record/1."""
    return {
        "schema": RECORD_SCHEMA,
        "name": hp.name,
        "track": hp.track,
        "date": run["date"],
        "description": hp.description,
        "author": {"name": hp.author, "affiliation": hp.affiliation, "url": hp.url},
        "code": {"sha256": digests, "git_commit": git_commit()},
        "data": {"dataset": meta.get("dataset"), "tokenizer": tokenizer_name, "vocab_size": vocab_size,
                 "fingerprint": meta_fingerprint},
        "model": asdict(config),
        "params": {"counted": params["counted"], "unique": params["unique"], "embedding": params["embedding"],
                   "weight_class": weight_class(params["counted"])},
        "training": {"steps": run["step"], "tokens": run["tokens"], "batch_tokens": run["batch_tokens"],
                     "seq_len": hp.seq_len, "seed": hp.seed, "world_size": run["world_size"],
                     "stopped_by": run["stopped_by"]},
        "compute": compute,
        "eval": {eval_id: {k: final_eval[k] for k in ("bpb", "loss", "tokens", "bytes", "fingerprint")}},
        "target": target,
        "judge": None,
        "software": software,
    }


def compute_block(config, hp, tokens, train_seconds, device_label, world_size, peak, peak_source) -> dict:
    """The compute fields, by flops.py, so leaderboard.py's recomputation (3 x forward FLOPs per token x
    tokens; seconds x devices x peak) gives the same numbers."""
    per_token = flops.forward_flops_per_token(config, hp.seq_len)
    model_flops = flops.model_flops(config, hp.seq_len, tokens)
    hardware_flops = flops.hardware_flops(train_seconds, world_size, peak)
    return {"flops_convention": "marin", "flops_per_token": per_token, "model_flops": model_flops,
            "hardware_flops": hardware_flops, "mfu": flops.mfu(model_flops, hardware_flops) if hardware_flops else 0.0,
            "device": device_label, "device_count": world_size, "peak_flops_per_device": peak,
            "peak_flops_source": peak_source, "train_seconds": train_seconds}


# -----------------------------------------------------------------------------
# Training


class StopRequested:
    """Ctrl-C (or SIGTERM) asks for a clean stop at the end of the step: a checkpoint is written there.
    A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nstop requested (signal {signum}): finishing this step and writing a checkpoint", flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingDiverged(RuntimeError):
    """A NaN/inf loss or gradient; the message names the step and the last good checkpoint."""


def check_resume_matches(progress: dict, batch_tokens: int, hardware: str, ckpt_dir: pathlib.Path) -> None:
    """A resumed run must keep the global batch (or the training changes) and the hardware (a record's
    hardware FLOPs are train_seconds x devices x one device's peak)."""
    if progress.get("batch_tokens", batch_tokens) != batch_tokens:
        raise UsageError(f"train.py: the run in {ckpt_dir} used {progress['batch_tokens']:,} tokens per step, these "
                         f"settings give {batch_tokens:,}; resume with --batch_tokens={progress['batch_tokens']}")
    if progress.get("hardware", hardware) != hardware and progress["train_seconds"] > 0:
        raise UsageError(f"train.py: the run in {ckpt_dir} trained on {progress['hardware']}, this is {hardware}; a "
                         f"record's hardware FLOPs assume one kind of hardware, so resume on the same devices")


def build_model_config(hp: Hyperparameters, n_vocab: int) -> GPTConfig:
    """The preset's config with the explicit overrides; GPTConfig checks the combination."""
    try:
        config = asdict(preset_config(hp.preset, n_vocab, hp.seq_len))
        config.update({key: getattr(hp, key) for key in ("n_layer", "n_head", "n_embd") if getattr(hp, key)})
        config["use_kernels"] = hp.kernels
        if hp.n_kv_head or hp.n_head:  # a new head count without a kv count means plain multi-head attention
            config["n_kv_head"] = hp.n_kv_head or hp.n_head
        return GPTConfig(**config)
    except ValueError as e:
        raise UsageError(f"train.py: {e} (from --preset={hp.preset} and the n_* overrides)") from None


def train(hp: Hyperparameters) -> dict:
    """One run. Returns a summary (per-step losses, validations, the record path) for tests and scripts."""
    rank, world_size, device = setup_distributed(hp)
    master = rank == 0
    try:
        return _train(hp, rank, world_size, device, master)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(hp, rank, world_size, device, master) -> dict:
    grad_accum, batch_tokens = global_batch(hp, world_size)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # data and tokenizer: the tokenizer is the one the data folder was prepared with
    data_dir = pathlib.Path(hp.data_dir)
    meta = prepare.read_meta(data_dir)
    meta_fingerprint = hashlib.sha256((data_dir / "meta.json").read_bytes()).hexdigest()
    tokenizer = prepare.tokenizer_spec(data_dir)
    enc = prepare.encoding_from_spec(tokenizer)
    delimiter = prepare.delimiter_id(enc)
    token_bytes = torch.from_numpy(prepare.token_byte_lengths(enc))
    train_files = prepare.list_shards(data_dir, "train")
    val_tokens = eval_bpb.load_eval_tokens(data_dir, enc, max_tokens=hp.val_tokens or None)
    eval_id = eval_bpb.default_eval_id(str(data_dir))

    # checkpoint folder, and the state to resume from
    ckpt_dir = pathlib.Path(hp.ckpt_dir or ROOT / "checkpoints" / hp.name)
    resume_ckpt = None
    if hp.resume:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            raise UsageError(f"train.py: --resume=1 but {ckpt_dir} holds no step_*.pt checkpoint; "
                             f"run without --resume, or point --ckpt_dir at the run's checkpoints")
        resume_ckpt = load_checkpoint(path, map_location="cpu")

    # the model
    torch.manual_seed(hp.seed)
    random.seed(hp.seed)
    config = build_model_config(hp, enc.n_vocab)
    if resume_ckpt is not None and resume_ckpt["config"] != asdict(config):
        raise UsageError(f"train.py: the checkpoint in {ckpt_dir} was trained with the model config "
                         f"{resume_ckpt['config']}, these settings build {asdict(config)}; resume with the same "
                         f"--preset/--n_layer/--n_head/--n_kv_head/--n_embd/--seq_len")
    raw_model = GPT(config).to(device)
    params = count_params(raw_model)
    optimizers = build_optimizers(raw_model, hp, rank, world_size, device)
    flops_per_step = flops.model_flops(config, hp.seq_len, batch_tokens)
    total_steps, step_budget = planned_steps(hp, batch_tokens, flops_per_step)

    step, tokens, train_seconds, position, out_dir = 0, 0, 0.0, None, None
    run_date = datetime.date.today().isoformat()
    if resume_ckpt is not None:
        raw_model.load_state_dict(resume_ckpt["model"])
        for opt, state in zip(optimizers, resume_ckpt["optimizers"]):
            opt.load_state_dict(state)
        restore_rng_states(resume_ckpt["rng"], device)
        progress = resume_ckpt["progress"]
        step, tokens, train_seconds = progress["step"], progress["tokens"], progress["train_seconds"]
        position, run_date, out_dir = resume_ckpt["data_state"], progress["date"], progress["out_dir"]
    out_dir = pathlib.Path(hp.out_dir or out_dir or ROOT / "records" / hp.track / f"{run_date}_{hp.name}")
    if resume_ckpt is None and (out_dir / "results.json").exists():
        raise UsageError(f"train.py: {out_dir} already holds a record (results.json); choose another --name "
                         f"or --out_dir, or delete it")
    for opt in optimizers:  # this command line's settings, also on resume (load_state_dict restored the saved ones)
        for group in opt.param_groups:
            group["initial_lr"] = {"embed": hp.embed_lr, "head": hp.head_lr,
                                   "scalar": hp.scalar_lr}.get(group.get("name"), hp.matrix_lr)
            if isinstance(opt, Muon):
                group.update(momentum=hp.muon_momentum, weight_decay=hp.weight_decay)
            else:
                group["betas"] = (hp.adam_beta1, hp.adam_beta2)

    model = raw_model
    if hp.compile and on_cuda:
        model = torch.compile(model)
    train_model = DDP(model, device_ids=[device.index] if on_cuda else None) if world_size > 1 else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()

    # the record folder and its log (rank 0 writes)
    sources = project_sources()
    digests = {name: hashlib.sha256(text).hexdigest() for name, text in sources.items()}
    software = software_versions()
    device_label = device_name(device)
    peak, peak_source = peak_flops_per_device(device, device_label)
    hardware = f"{world_size} x {device_label}"
    if resume_ckpt is not None:
        check_resume_matches(resume_ckpt["progress"], batch_tokens, hardware, ckpt_dir)
    log_file = None
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        log_path = out_dir / "train.log"
        continuing = resume_ckpt is not None and log_path.is_file() and log_path.stat().st_size > 0
        log_file = open(log_path, "a" if continuing else "w", encoding="utf-8")
        if not continuing or resume_ckpt.get("code_sha256") != digests:
            log_file.write(record_header(sources, digests))  # resumed with changed code: the new code is logged too

    def log(line: str, console: bool = True):
        if master:
            log_file.write(line + "\n")
            log_file.flush()
            if console:
                print(line, flush=True)

    for line in environment_lines(software, device, device_label, world_size):
        log(line, console=False)
    log(f"hyperparameters {json.dumps(asdict(hp))}", console=False)
    log(f"model {json.dumps(asdict(config))}", console=False)
    log(f"params counted {params['counted']:,} unique {params['unique']:,} embedding {params['embedding']:,} "
        f"class {weight_class(params['counted'])}")
    log(f"batch {batch_tokens:,} tokens/step = {world_size} processes x {hp.batch_size} sequences x {grad_accum} "
        f"micro-steps x {hp.seq_len} tokens | {flops_per_step / batch_tokens / 3:,.0f} forward FLOPs/token | "
        f"peak {peak:.3e} FLOP/s/device ({peak_source}) | {device_label} x {world_size}")
    log(f"budget: {f'{total_steps} steps ({step_budget})' if total_steps else ''}"
        f"{' ' if total_steps and hp.max_seconds else ''}{f'{hp.max_seconds:g} s' if hp.max_seconds else ''}"
        f"{f' or val bpb <= {hp.target_bpb}' if hp.target_bpb else ''}")
    if resume_ckpt is not None:
        log(f"resumed from {latest_checkpoint(ckpt_dir)} at step {step}")

    wandb_run = None
    if hp.wandb and master:
        try:
            import wandb
        except ImportError:
            raise UsageError("train.py: --wandb=1 but wandb is not installed; pip install wandb") from None
        wandb_run = wandb.init(project=hp.wandb_project, name=hp.name, config=asdict(hp))

    loader = DataLoader(train_files, hp.seq_len, hp.batch_size, grad_accum, delimiter, rank, world_size,
                        position=position, pin_memory=on_cuda)

    # The first CUDA forward/backward compiles (torch.compile, Triton's JIT) and sets up cuBLAS and SDPA: do
    # that before the clock starts, on random tokens (not the loader's, which would move the data position);
    # gradients are discarded.
    if on_cuda:
        warmup = torch.randint(0, enc.n_vocab, (hp.batch_size, hp.seq_len + 1), device=device,
                               generator=torch.Generator(device=device).manual_seed(0))
        for _ in range(2):
            with autocast:
                train_model(warmup[:, :-1], warmup[:, 1:]).backward()
        raw_model.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)

    val_fingerprint = eval_bpb.eval_fingerprint(val_tokens, token_bytes.numpy(), enc)  # once: the val set is fixed

    def validate() -> dict:
        result = eval_bpb.evaluate_bpb(model, val_tokens, token_bytes, hp.seq_len, hp.batch_size, device)
        result["fingerprint"] = val_fingerprint
        if not math.isfinite(result["bpb"]):  # a record must never carry NaN (it is not even valid JSON)
            message = (f"train.py: the validation BPB is {result['bpb']} at step {step}; stopped, no record written "
                       f"(checkpoints in {ckpt_dir}); lower the learning rates")
            log(message, console=False)
            raise TrainingDiverged(message)
        log(f"step {step} val bpb {result['bpb']:.6f} loss {result['loss']:.6f} ({result['tokens']:,} tokens, "
            f"{result['bytes']:,} bytes)")
        if wandb_run is not None:
            wandb_run.log({"val/bpb": result["bpb"], "val/loss": result["loss"]}, step=step)
        return result

    def save(at_step: int) -> pathlib.Path:
        path = checkpoint_path(ckpt_dir, at_step)
        if master:
            save_checkpoint(path, raw_model, config, tokenizer, at_step,
                            optimizers=[opt.state_dict() for opt in optimizers], rng=rng_states(device),
                            data_state=dict(loader.position), hparams=asdict(hp), code_sha256=digests,
                            progress={"step": at_step, "tokens": tokens, "train_seconds": train_seconds,
                                      "date": run_date, "out_dir": str(out_dir), "batch_tokens": batch_tokens,
                                      "hardware": hardware})
            for old in checkpoints_by_step(ckpt_dir)[:-hp.keep_checkpoints]:
                old.unlink()
        if world_size > 1:
            dist.barrier()  # the other ranks wait here, not inside their next timed step
        return path

    losses, validations, last_saved, last_val = [], [], None, None
    stopped_by, target_seconds = None, None
    with StopRequested() as stop:
        try:
            while True:
                # budgets, checked between steps
                if total_steps is not None and step >= total_steps:
                    stopped_by = step_budget
                elif hp.max_seconds and train_seconds >= hp.max_seconds:
                    stopped_by = "max_seconds"
                if stopped_by or (hp.val_every and step % hp.val_every == 0):
                    last_val = (step, validate())  # not timed
                    validations.append({"step": step, **last_val[1]})
                    if hp.target_bpb and last_val[1]["bpb"] <= hp.target_bpb and target_seconds is None:
                        target_seconds = train_seconds
                        stopped_by = stopped_by or "target_bpb"
                if stopped_by:
                    break

                # one optimizer step: grad_accum micro-steps, then Muon + AdamW
                if on_cuda:
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                multiplier = lr_multiplier(step, schedule_progress(step, total_steps, train_seconds, hp), hp)
                for opt in optimizers:
                    for group in opt.param_groups:
                        group["lr"] = group["initial_lr"] * multiplier
                batch = loader.next_batch().to(device, non_blocking=True)
                loss_sum = torch.zeros((), device=device)
                for micro in range(grad_accum):
                    sync = micro == grad_accum - 1  # DDP all-reduces gradients on the last micro-step only
                    with (train_model.no_sync() if world_size > 1 and not sync else contextlib.nullcontext()):
                        with autocast:
                            loss = train_model(batch[micro, :, :-1], batch[micro, :, 1:])
                        (loss / grad_accum).backward()
                    loss_sum += loss.detach().float()
                grad_norm = nn.utils.clip_grad_norm_(raw_model.parameters(), hp.grad_clip or float("inf"))
                for opt in optimizers:
                    opt.step()
                raw_model.zero_grad(set_to_none=True)
                # one sync per step: the mean loss over ranks and micro-steps, and the stop flag of any rank
                stats = torch.stack([loss_sum / grad_accum, torch.full((), float(stop.requested), device=device),
                                     grad_norm.float().to(device)])
                if world_size > 1:
                    dist.all_reduce(stats)  # a sum: the mean loss, any rank's stop flag; the norm is the same on all
                    stats /= world_size
                train_loss, interrupted, norm = stats.tolist()
                dt = time.perf_counter() - t0
                if world_size > 1:  # one clock for all ranks: time budgets and the schedule must agree everywhere
                    clock = torch.tensor([dt], dtype=torch.float64, device=device)
                    dist.all_reduce(clock)
                    dt = clock.item() / world_size
                step += 1
                if not (math.isfinite(train_loss) and math.isfinite(norm)):
                    what, value = ("loss", train_loss) if not math.isfinite(train_loss) else ("gradient norm", norm)
                    message = (f"train.py: the {what} is {value} at step {step}; stopped. The last good checkpoint "
                               f"is {last_saved or 'none: none was written yet'}; lower the learning rates and "
                               f"resume with --resume=1")
                    log(message, console=False)
                    raise TrainingDiverged(message)
                train_seconds += dt
                tokens += batch_tokens
                losses.append(train_loss)
                step_mfu = flops_per_step / (dt * world_size * peak)
                log(f"step {step}{f'/{total_steps}' if total_steps else ''} loss {train_loss:.6f} "
                    f"lr {hp.matrix_lr * multiplier:.4e} tokens {tokens} ms/step {dt * 1000:.1f} "
                    f"tok/s {batch_tokens / dt:.0f} mfu {100 * step_mfu:.2f}%")
                if wandb_run is not None:
                    wandb_run.log({"train/loss": train_loss, "lr_multiplier": multiplier, "tokens": tokens,
                                   "tokens_per_s": batch_tokens / dt, "mfu": step_mfu}, step=step)
                if interrupted:
                    stopped_by = "interrupt"
                    break
                if hp.checkpoint_every and step % hp.checkpoint_every == 0:
                    last_saved = save(step)
        finally:
            loader.close()

    last_saved = save(step) if last_saved != checkpoint_path(ckpt_dir, step) else last_saved
    log(f"checkpoint {last_saved}")
    if stopped_by == "interrupt":
        log(f"interrupted at step {step}: continue with --resume=1 (no record is written for an unfinished run)")
        raise KeyboardInterrupt
    if last_val is None or last_val[0] != step:
        last_val = (step, validate())
        validations.append({"step": step, **last_val[1]})
    final_eval = last_val[1]

    # the record
    run = {"date": run_date, "step": step, "tokens": tokens, "batch_tokens": batch_tokens,
           "world_size": world_size, "stopped_by": stopped_by}
    target = None
    if hp.target_bpb:
        target = {"metric": "bpb", "value": hp.target_bpb, "reached": target_seconds is not None,
                  "seconds": target_seconds}
    compute = compute_block(config, hp, tokens, train_seconds, device_label, world_size, peak, peak_source)
    record = build_record(hp, run, config, params, meta, meta_fingerprint, tokenizer["name"], enc.n_vocab, eval_id,
                          final_eval, target, compute, software, digests)
    if master:
        prepare.write_json_atomic(out_dir / "results.json", record)
        log(f"done: {step} steps, {tokens:,} tokens in {train_seconds:.1f} s of training "
            f"({tokens / max(train_seconds, 1e-9):,.0f} tokens/s, MFU {100 * compute['mfu']:.2f}%), "
            f"stopped by {stopped_by}, val bpb {final_eval['bpb']:.4f} -> {out_dir / 'results.json'}")
        log_file.close()
        if wandb_run is not None:
            wandb_run.finish()
    return {"losses": losses, "validations": validations, "record": record, "out_dir": out_dir,
            "checkpoint": last_saved}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return
    try:
        train(parse_args(argv))
    except (UsageError, prepare.ShardError, eval_bpb.EvalError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
