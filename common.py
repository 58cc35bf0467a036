"""
What every script shares, and nothing else: the command-line helpers, the one atomic file writer, the
folder locks and the device/process set-up. It imports no project file, so any script can import it.

    parser = common.ArgumentParser(prog="x.py")      # mistakes raise ValueError ...
    sys.exit(common.run_main("x.py", run))           # ... which become one `error:` line and exit 2
    common.write_json_atomic(path, obj)              # a crash leaves the old file or the new one
    with common.folder_lock(out_dir): ...            # one run per folder
    rank, world_size, device = common.setup_distributed("auto")
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import math
import os
import pathlib
import re
import socket
import sys
import time

import filelock  # a dependency of torch, so always installed beside it

# -----------------------------------------------------------------------------
# Command lines: the one option-parsing helper of every script. A user's mistake raises ValueError (the
# message names the file or flag and the fix); run_main turns it into one `error:` line and exit 2.


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes raise ValueError instead of printing usage and exiting, so the script's
    run_main reports them like every other bad input. Prefixes of flags are not guessed."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        unknown = re.search(r"unrecognized arguments: (--[^=\s]+)", message)
        if unknown:
            known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
            close = difflib.get_close_matches(unknown.group(1), known, n=1)
            if close:
                message += f"; did you mean {close[0]}?"
        raise ValueError(f"{message} (python {self.prog} --help lists the options)")


def parse_count(text: str) -> int:
    """A whole number written 100000000, 100_000_000 or 1e8 (never rounded: 1.5e0 is refused)."""
    try:
        return int(text.replace("_", ""))
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not math.isfinite(value) or not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def parse_finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def parse_bool(text: str) -> bool:
    if text.lower() not in ("1", "0", "true", "false"):
        raise argparse.ArgumentTypeError(f"expected 1/0/true/false, got {text!r}")
    return text.lower() in ("1", "true")


FIELD_PARSERS = {int: parse_count, float: parse_finite, bool: parse_bool, str: str,
                 "int": parse_count, "float": parse_finite, "bool": parse_bool, "str": str}


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One `--field=value` flag per field of the dataclass `cls`, typed by the field (defaults left unset,
    so the caller can tell a given flag from a default: parse with argument_default=SUPPRESS)."""
    for field in dataclasses.fields(cls):
        if field.name not in skip:
            parser.add_argument(f"--{field.name}", type=FIELD_PARSERS[field.type], default=argparse.SUPPRESS,
                                metavar=str(field.type if isinstance(field.type, str) else field.type.__name__).upper())


def run_main(script: str, run, argv=None) -> int:
    """Call run(argv); a ValueError (bad input) or OSError (a file that cannot be read or written, a full
    disk) becomes one `error: SCRIPT: ...` line and exit 2; Ctrl-C exit 130. Other errors are bugs and keep
    their traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(argv) or 0
    except SystemExit as e:  # argparse's --help
        return e.code if isinstance(e.code, int) else 0
    except ValueError as e:
        message = str(e)
    except OSError as e:
        message = f"{e.strerror or e}: {e.filename}" if e.filename else str(e)
    except KeyboardInterrupt:
        print(f"error: {script}: interrupted", file=sys.stderr)
        return 130
    prefix = f"{script}: "
    print(f"error: {prefix if not message.startswith(prefix) else ''}{message}", file=sys.stderr)
    return 2


# -----------------------------------------------------------------------------
# Files written atomically: a crash (kill -9, a full disk, a power cut) leaves the old file or the new one,
# never half of one. The one writer of every file the project produces: shards, meta.json, checkpoints,
# results.json, judge.json, the README tables and plot.

TEMP_NAME = re.compile(r"\..+\.tmp\d+")  # .NAME.tmpPID: what atomic_file writes before the rename


def temp_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path):
    """Yield a binary file to write `path`'s new content into: a temp file in the same folder, flushed to
    disk, then renamed over `path` when the block completes; removed when it fails."""
    path = pathlib.Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so a power cut cannot leave an empty file
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None:  # a failed write (a full disk) names no file: name the one being written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    finally:
        if tmp.exists():  # only after a failure: the rename consumed it otherwise
            tmp.unlink()


def write_file_atomic(path, *chunks) -> None:
    """Write `chunks` (bytes, or contiguous arrays) to `path` atomically (atomic_file)."""
    with atomic_file(path) as f:
        for chunk in chunks:
            f.write(chunk)


def write_json_atomic(path, obj) -> None:
    """`obj` as indented UTF-8 JSON, atomically."""
    write_file_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def remove_orphan_temp_files(folder: pathlib.Path) -> None:
    """Temp files a killed writer left in `folder` (kill -9 during a checkpoint or results.json write). Call it
    while holding the folder's lock; a temp file whose process is alive (eval_bpb.py or judge.py writing into
    the record, which take no lock) is left alone."""
    if folder.is_dir():
        for p in folder.iterdir():
            if TEMP_NAME.fullmatch(p.name) and p.is_file() and not process_alive(int(p.name.rpartition(".tmp")[2])):
                p.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a file named after a live process is in use)."""
    if pid == os.getpid():
        return False  # a file of ours from an earlier process with this id: stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (another user's)
    return True


# -----------------------------------------------------------------------------
# Folder locks: one run per record or checkpoint folder, or two runs interleave their logs and delete
# each other's checkpoints. The lock is the operating system's (filelock: flock on Unix), so it is atomic
# and released by the kernel however its process ends (kill -9 included): no stale lock, no reused pid.
# LOCK.json beside it names the holder for the refusal message; the LOCK file itself stays (deleting it
# on release would let a waiting run and a new one lock two different files).

LOCK_NAME, HOLDER_NAME = "LOCK", "LOCK.json"


def lock_holder(folder: pathlib.Path) -> str:
    try:
        holder = json.loads((folder / HOLDER_NAME).read_text())
        return ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "started", "command"))
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def folder_lock(folder: pathlib.Path):
    """Hold `folder`'s lock for the block; ValueError naming the holder when another process has it."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(folder / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise ValueError(f"{folder} is in use by another run ({lock_holder(folder)}); wait for it, "
                         f"or choose another --name/--out_dir/--ckpt_dir") from None
    try:
        write_json_atomic(folder / HOLDER_NAME, {"pid": os.getpid(), "host": socket.gethostname(),
                                                 "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                 "command": " ".join(sys.argv)})
        yield
    finally:
        (folder / HOLDER_NAME).unlink(missing_ok=True)
        lock.release()


# -----------------------------------------------------------------------------
# Devices and processes. torch is imported inside these functions so that the scripts that never touch a
# device (prepare.py's workers, leaderboard.py's table writing) do not pay for importing it.


def resolve_device(name: str | None = None):
    """The device to run a model on: `name` (cpu, cuda, cuda:N, mps), or the best available one for None or
    "auto". ValueError with the fix when it is not a device name or this machine does not have it."""
    import torch
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else
                            "mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device name; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        available = torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    else:
        available = device.type == "cpu" or (device.type == "mps" and torch.backends.mps.is_available())
    if not available:
        raise ValueError(f"device {name!r} is not available on this machine (CUDA devices: "
                         f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}); use cpu or leave it unset")
    return device


def setup_distributed(requested: str | None):
    """(rank, world_size, device) of this process. Under torchrun (RANK and WORLD_SIZE set) the process joins
    the group: NCCL on CUDA (device cuda:LOCAL_RANK), gloo on CPU. ValueError says what is wrong with the
    device. The caller destroys the group (destroy_distributed) however it ends."""
    import torch
    import torch._dynamo  # noqa: F401  before the group exists: see below
    import torch.distributed as dist
    device = resolve_device(requested)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    # torch._dynamo imported after init_process_group (torch.optim's first optimizer imports it) keeps a
    # reference to the default group, so destroy_process_group no longer destroys it: gloo's worker threads
    # then live into the interpreter's shutdown, and one that frees a tensor there needs the GIL and is
    # ended with pthread_exit inside C++: "terminate called without an active exception", SIGABRT (a
    # 2-process test failed that way in about 1 run of 4). Imported first, the group is destroyed and its
    # threads joined while the interpreter is whole.
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    elif device.type == "cpu":
        dist.init_process_group("gloo")
    else:
        raise ValueError(f"torchrun needs CUDA (NCCL) or CPU (gloo), not {device.type}")
    return dist.get_rank(), dist.get_world_size(), device


def destroy_distributed() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


def synchronize(device) -> None:
    """Wait for the device's queued work (a no-op on a CPU, whose ops run when called)."""
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
