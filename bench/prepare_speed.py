"""
prepare.py's wall time against a bare in-process tiktoken encode_ordinary_batch of the same documents (the
floor: tokenizing is the only work that cannot be avoided): the evidence that preparing costs about one
tokenizing pass.

    python bench/prepare_speed.py --input TinyStoriesV2-GPT4-train.txt --out /tmp/bench --mb 20 40

For each size it builds a distinct-document input from the --input files, then alternates `--rounds` times
between the bare tiktoken call and the whole prepare.py command (a fresh process), and prints the medians
as a Markdown table row.
"""
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/NAME.py`: the project's modules are one folder up

import common  # noqa: E402
import prepare  # noqa: E402


def build_input(inputs: list[str], path: pathlib.Path, megabytes: float) -> list[str]:
    """Write a <|endoftext|>-separated .txt of at least `megabytes` MB from the inputs' documents,
    repeating them with a copy number appended so that every document is distinct (dedup keeps all)."""
    prepare.init_worker(None, "off", "uint16")
    base = []
    for p in inputs:
        for task in prepare.file_tasks(pathlib.Path(p)):
            base += prepare.process_task(task)["texts"]
    if not base:
        raise ValueError("--input: the files hold no documents")
    docs, size, copy = [], 0, 0
    while size < megabytes * 1e6:
        for d in base:
            doc = d if copy == 0 else f"{d} ({copy})"
            docs.append(doc)
            size += len(doc.encode("utf-8")) + len(prepare.DELIMITER) + 2
            if size >= megabytes * 1e6:
                break
        copy += 1
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(d + "\n" + prepare.DELIMITER + "\n")
    return docs


def children_cpu_seconds() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_one_size(args, mb: float, enc, out: pathlib.Path) -> str:
    path = out / f"bench_{mb:g}MB.txt"
    docs = build_input(args.input, path, mb)
    nbytes = path.stat().st_size
    cmd = [sys.executable, str(ROOT / "prepare.py"), "--input", str(path), "--tokenizer", "gpt2",
           "--out", str(out / "shards"), "--shard_tokens", str(args.shard_tokens), "--quiet", "--report_rss"]
    t_tiktoken, t_prepare, cpu_tiktoken, cpu_prepare, rss = [], [], [], [], []
    for _ in range(args.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        enc.encode_ordinary_batch(docs)
        t_tiktoken.append(time.perf_counter() - t0)
        cpu_tiktoken.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), children_cpu_seconds()
        run = subprocess.run(cmd, capture_output=True, text=True)
        t_prepare.append(time.perf_counter() - t0)
        cpu_prepare.append(children_cpu_seconds() - c0)
        if run.returncode != 0:
            raise ValueError(f"prepare.py failed: {(run.stderr.strip().splitlines() or [''])[-1]}")
        rss.append(json.loads(run.stdout.strip().splitlines()[-1]))
    path.unlink()
    tt, tp = statistics.median(t_tiktoken), statistics.median(t_prepare)
    ct, cp = statistics.median(cpu_tiktoken), statistics.median(cpu_prepare)
    kept = prepare.read_meta(out / "shards")["cleaning"]["counts"]["kept"]
    return (f"| {nbytes / 1e6:.1f} | {kept:,} | {tt:.2f} | {tp:.2f} | {nbytes / 1e6 / tp:.2f} | **{tp / tt:.2f}** | "
            f"{ct:.2f} | {cp:.2f} | {cp / ct:.2f} | {max(r['main_mb'] for r in rss):.0f} | "
            f"{max(r['worker_mb'] for r in rss):.0f} |")


def run(argv) -> None:
    p = common.ArgumentParser(prog="bench/prepare_speed.py", description=__doc__)
    p.add_argument("--input", nargs="+", required=True, help="text files to build the documents from")
    p.add_argument("--out", required=True, help="a scratch folder (the inputs and shards are written there)")
    p.add_argument("--mb", type=common.parse_finite, nargs="+", default=[20.0, 40.0], help="input sizes to time")
    p.add_argument("--rounds", type=common.parse_count, default=3, help="timings per size (median reported)")
    p.add_argument("--shard_tokens", type=common.parse_count, default=100_000_000)
    args = p.parse_args(argv)
    if args.rounds < 1 or min(args.mb) <= 0:
        raise ValueError("--rounds and --mb must be > 0")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    enc = prepare.encoding_from_spec({"name": "gpt2"})
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; medians of "
          f"{args.rounds} alternating rounds; --shard_tokens {args.shard_tokens:,}\n")
    print("| input MB | docs kept | tiktoken wall s | prepare.py wall s | prepare.py MB/s | wall ratio | "
          "tiktoken CPU s | prepare.py CPU s | CPU ratio | peak RSS main MB | peak RSS worker MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mb in args.mb:
        print(time_one_size(args, mb, enc, out), flush=True)


if __name__ == "__main__":
    sys.exit(common.run_main("bench/prepare_speed.py", run))
