"""Tests for common.py (the helpers every script shares) and the benchmarks' command lines: the option parser,
the atomic writer, the folder locks (filelock), the device helpers; the import graph of the project."""
import ast
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import common
from helpers import ROOT

PROJECT = sorted(p.stem for p in ROOT.glob("*.py"))


# -----------------------------------------------------------------------------
# The layout: what imports what


def project_imports(name: str) -> set[str]:
    """The project modules `name`.py imports anywhere in the file (top level or inside a function)."""
    tree = ast.parse((ROOT / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PROJECT) - {name}


def test_no_import_cycle_and_the_leaves_import_nothing_of_the_project():
    graph = {name: project_imports(name) for name in PROJECT}
    assert graph["common"] == set() and graph["kernels"] == set(), graph
    assert {n for n, deps in graph.items() if "kernels" in deps} == {"model"}
    assert {n for n, deps in graph.items() if "prepare" in deps} <= {"train", "eval_bpb", "judge", "export"}, graph

    def visit(node, path):
        assert node not in path, f"import cycle: {' -> '.join(path + [node])}"
        for dep in graph[node]:
            visit(dep, path + [node])

    for name in PROJECT:
        visit(name, [])


# -----------------------------------------------------------------------------
# The option parser and run_main


def test_counts_are_never_rounded_and_bad_flags_are_one_line(capsys):
    assert common.parse_count("1e6") == 10 ** 6 and common.parse_count("100_000") == 100000
    for bad in ("1.5", "inf", "x"):
        with pytest.raises(Exception):
            common.parse_count(bad)
    parser = common.ArgumentParser(prog="x.py")
    parser.add_argument("--steps", type=common.parse_count)

    def run(argv):
        parser.parse_args(argv)

    assert common.run_main("x.py", run, ["--stpes=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean --steps?" in err and err.startswith("error: x.py: ")


# -----------------------------------------------------------------------------
# The atomic writer


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "results.json"
    common.write_json_atomic(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with common.atomic_file(path) as f:
            f.write(b"half of a new file")
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_orphan_temp_files_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / ".step_000020.pt.tmp12345").write_bytes(b"partial")
    (tmp_path / ".results.json.tmp999").write_bytes(b"partial")
    (tmp_path / "step_000010.pt").write_bytes(b"kept")
    (tmp_path / "notes.tmp1").write_bytes(b"not ours: no leading dot")
    common.remove_orphan_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp1", "step_000010.pt"]


def test_the_checkpoint_writer_is_the_atomic_writer(tmp_path, monkeypatch):
    import model
    from helpers import tiny_config
    gpt = model.GPT(tiny_config())
    used = []
    real = common.atomic_file
    monkeypatch.setattr(common, "atomic_file", lambda path: used.append(path) or real(path))
    model.save_checkpoint(tmp_path / "c" / "step_000001.pt", gpt, gpt.config, {"name": "x"}, 1)
    assert used == [tmp_path / "c" / "step_000001.pt"]
    assert model.load_checkpoint(used[0])["step"] == 1


# -----------------------------------------------------------------------------
# Folder locks (issue 23's item 3: two processes held one lock when the holder was written after the create)

HOLD = """
import pathlib, sys, time
import common
with common.folder_lock(pathlib.Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_lock(folder, seconds=60.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    holder = hold_lock(tmp_path / "run")
    try:
        with pytest.raises(ValueError, match="in use by another run") as e:
            with common.folder_lock(tmp_path / "run"):
                pass
        assert f"pid {holder.pid}" in str(e.value) and "command" in str(e.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holders_lock_is_free_at_once_whatever_its_files_say(tmp_path):
    """kill -9 leaves LOCK and LOCK.json behind; the kernel released the lock, so the next run takes it (a pid
    reused by another process, or a garbage LOCK.json, changes nothing: the lock is not read from the file)."""
    holder = hold_lock(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run" / "LOCK.json").exists()
    (tmp_path / "run" / "LOCK.json").write_text(json.dumps({"pid": 1, "host": "here", "started": 0, "command": "x"}))
    with common.folder_lock(tmp_path / "run"):
        assert json.loads((tmp_path / "run" / "LOCK.json").read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("ending", ["return", "error", "interrupt"])
def test_the_lock_is_released_however_the_block_ends(tmp_path, ending):
    folder = tmp_path / "run"
    with pytest.raises((ValueError, KeyboardInterrupt)) if ending != "return" else open(os.devnull):
        with common.folder_lock(folder):
            if ending == "error":
                raise ValueError("bad input")
            if ending == "interrupt":
                raise KeyboardInterrupt
    assert not (folder / "LOCK.json").exists()
    holder = hold_lock(folder, 0.1)  # another process takes it at once
    holder.wait()


RACE = """
import pathlib, sys, time
import common
while time.time() < float(sys.argv[2]):
    pass
try:
    with common.folder_lock(pathlib.Path(sys.argv[1])):
        print("got", flush=True)
        time.sleep(1.0)
except ValueError:
    print("refused", flush=True)
"""


def test_processes_released_together_never_share_the_lock(tmp_path):
    for trial in range(3):
        start = time.time() + 1.0
        procs = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path / f"run{trial}"), str(start)],
                                  stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
                 for _ in range(4)]
        answers = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
        assert answers == ["got", "refused", "refused", "refused"], answers


# -----------------------------------------------------------------------------
# Devices


def test_resolve_device():
    assert common.resolve_device("cpu") == torch.device("cpu")
    assert common.resolve_device(None).type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="not a device name"):
        common.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            common.resolve_device("cuda")
    else:
        with pytest.raises(ValueError, match="not available"):
            common.resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert common.setup_distributed("cpu") == (0, 1, torch.device("cpu"))
    common.destroy_distributed()  # nothing to destroy: a no-op


# -----------------------------------------------------------------------------
# The benchmarks' command lines (the kernel benchmark itself needs a GPU)


def test_kernel_bench_args_are_typed_and_bad_ones_rejected():
    import kernels_speed
    args = kernels_speed.make_parser().parse_args(["--iters=5", "--presets=small"])
    assert args.iters == 5 and args.presets == "small" and args.seq_len == 1024
    for bad in (["--iters=x"], ["--nope=1"], ["iters=3"]):
        with pytest.raises(ValueError):
            kernels_speed.make_parser().parse_args(bad)


@pytest.mark.parametrize("script", ["kernels_speed.py", "prepare_speed.py", "bench_step.py", "cpu_track_ablation.py"])
def test_each_benchmark_runs_as_a_script(script):
    """`python bench/NAME.py --help` from any folder: the scripts find the project's modules themselves."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True, text=True,
                         cwd="/", timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr[-1000:]


def test_kernel_bench_cli_exit_codes():
    run = [sys.executable, str(ROOT / "bench" / "kernels_speed.py")]
    bad = subprocess.run(run + ["--iters=zero"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: bench/kernels_speed.py: argument --iters")
    assert subprocess.run(run + ["--iters=0"], capture_output=True, timeout=120).returncode == 2
    if not torch.cuda.is_available():
        ok = subprocess.run(run, capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0 and "skipped" in ok.stdout
