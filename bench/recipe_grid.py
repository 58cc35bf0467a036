"""
The recipe grid: train.py's bare CPU defaults over three data sizes and several budgets, two seeds a cell,
BPB on documents the run never saw. The claim it checks: more compute never makes the model worse, and small
data is not memorised (README, "The CPU track").

    python bench/recipe_grid.py                                   # every cell: 2 runs at a time, 1 thread each
    python bench/recipe_grid.py --data=split --budgets=100,300 --seeds=1

Data, built from ../shared/data on first use (under data/grid/):
  split      the first 10,000 lines of TinyStoriesV2-GPT4-train, every 10th document held out (173 documents,
             138,539 bytes), bpe:2048 fitted on the rest: 331,939 training tokens
  cpu-track  the README's CPU-track folder (both TinyStories samples, bpe:4096): 836,255 training tokens; held
             out: the TinyStories validation head
  mix        both TinyStories samples and the FineWeb-Edu sample (one document per line: the sample has no
             separators), every 10th document held out, bpe:4096 fitted on the rest
(prepare.py --val_fraction 0.02 gives each folder the small validation split train.py watches.)

A budget is seconds of training on 2 cores, run as the model FLOPs the CPU defaults reach in them
(--flops_per_second, measured): a FLOP budget does not depend on the machine's load, so runs can share it.
Each run is `python train.py --data_dir=D --device=cpu --max_flops=F --seed=S --out_dir=... --ckpt_dir=...`, then
`python eval_bpb.py --ckpt LAST --data HELDOUT --json` at the model's own context. Finished runs are kept in
--out and not run again.
"""
import concurrent.futures
import json
import os
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402
import prepare  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
STORIES_V2 = SHARED / "tinystories" / "TinyStoriesV2-GPT4-train_first10000lines.txt"
STORIES_V1 = SHARED / "tinystories" / "TinyStories-train_first2MiB.txt"
VALID_HEAD = SHARED / "tinystories" / "tinystories_hf_validation_head.txt"
FINEWEB = SHARED / "fineweb_edu" / "fineweb_edu_sample10BT_first1M_chars.txt"
# the model FLOP/s of train.py's CPU defaults on this project's 2-core AMD EPYC: 1.2100e13 model FLOPs in 89.1 s
# of training, `python train.py --data_dir=data/grid/split --max_seconds=100` (README, "The CPU track")
FLOPS_PER_SECOND = 1.36e11
BUDGETS = {"split": (30, 100, 300), "cpu-track": (30, 100, 300, 1000), "mix": (30, 100, 300)}


def marked_documents(path: pathlib.Path) -> list[str]:
    """The documents of a TinyStories .txt, split at its <|endoftext|> lines."""
    docs = path.read_text(encoding="utf-8").split(prepare.DELIMITER)
    return [d.strip() for d in docs if d.strip()]


def line_documents(path: pathlib.Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_documents(path: pathlib.Path, docs: list[str]) -> None:
    path.write_text(f"\n{prepare.DELIMITER}\n".join(docs) + "\n", encoding="utf-8")


def hold_out_every_10th(docs: list[str], folder: pathlib.Path, tokenizer: str) -> tuple[pathlib.Path, pathlib.Path]:
    """Documents 0, 10, 20, ... to heldout.txt, the rest prepared into folder/ (the BPE fitted on them only)."""
    text = folder.with_name(folder.name + "-text")
    text.mkdir(parents=True, exist_ok=True)
    write_documents(text / "train.txt", [d for i, d in enumerate(docs) if i % 10])
    write_documents(text / "heldout.txt", docs[::10])
    prepare_folder(folder, [text / "train.txt"], tokenizer)
    return folder, text / "heldout.txt"


def prepare_folder(folder: pathlib.Path, inputs: list, tokenizer: str) -> None:
    if not (folder / "meta.json").is_file():
        subprocess.run([sys.executable, "prepare.py", "--input", *map(str, inputs), "--tokenizer", tokenizer,
                        "--val_fraction", "0.02", "--out", str(folder), "--quiet"], cwd=ROOT, check=True)


def build_data(name: str, root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(prepared folder, held-out text) of one data set."""
    if name == "split":
        return hold_out_every_10th(marked_documents(STORIES_V2), root / "split", "bpe:2048")
    if name == "cpu-track":
        prepare_folder(root / "cpu-track", [STORIES_V2, STORIES_V1], "bpe:4096")
        return root / "cpu-track", VALID_HEAD
    docs = marked_documents(STORIES_V2) + marked_documents(STORIES_V1) + line_documents(FINEWEB)
    return hold_out_every_10th(docs, root / "mix", "bpe:4096")


def run_one(data: str, folder: pathlib.Path, heldout: pathlib.Path, seconds: int, seed: int, args) -> dict:
    """One cell's run (or its kept result): the record's training block and the held-out BPB."""
    name = f"{data}-{seconds}s-{seed}"
    out, ckpt, result = args.out / name, args.out / "checkpoints" / name, args.out / name / "heldout.json"
    if result.is_file():
        return json.loads(result.read_text())
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for path in (out, ckpt):  # an interrupted run starts over
        subprocess.run(["rm", "-rf", str(path)], check=True)
    subprocess.run([sys.executable, "train.py", f"--data_dir={folder}", "--device=cpu",
                    f"--max_flops={seconds * args.flops_per_second:.6g}", f"--seed={seed}", f"--name=grid-{name}",
                    f"--out_dir={out}", f"--ckpt_dir={ckpt}"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    last = sorted(ckpt.glob("step_*.pt"), key=lambda p: int(p.stem[5:]))[-1]
    scored = subprocess.run([sys.executable, "eval_bpb.py", "--ckpt", str(last), "--data", str(heldout), "--device",
                             "cpu", "--json"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    training = json.loads((out / "results.json").read_text())["training"]
    cell = {"data": data, "seconds": seconds, "seed": seed, "bpb": json.loads(scored.stdout)["bpb"], **training}
    result.write_text(json.dumps(cell, indent=1))
    return cell


def table(cells: list[dict], budgets: dict) -> str:
    """One row per data set, one column per budget: the mean BPB (the seeds), the passes; and the largest
    rise from one budget to the next against the largest spread between seeds."""
    columns = sorted({s for b in budgets.values() for s in b})
    lines = ["| data | training tokens | " + " | ".join(f"{s:,} s" for s in columns) + " | largest rise | seed spread |",
             "|---|---:|" + "---:|" * len(columns) + "---:|---:|"]
    for data, row_budgets in budgets.items():
        row = {s: [c for c in cells if c["data"] == data and c["seconds"] == s] for s in row_budgets}
        row = {s: got for s, got in row.items() if got}
        if not row:
            continue
        means = {s: statistics.mean(c["bpb"] for c in got) for s, got in row.items()}
        rises = [means[b] - means[a] for a, b in zip(sorted(means), sorted(means)[1:])]
        spread = max(max(c["bpb"] for c in got) - min(c["bpb"] for c in got) for got in row.values())
        first = next(iter(row.values()))[0]
        texts = []
        for s in columns:
            if s not in row:
                texts.append("")
                continue
            seeds = " / ".join(f"{c['bpb']:.4f}" for c in sorted(row[s], key=lambda c: c["seed"]))
            texts.append(f"{means[s]:.4f} ({seeds}; {row[s][0]['passes']:.2f} passes)")
        lines.append(f"| {data} | {round(first['tokens'] / first['passes']):,} | " + " | ".join(texts) +
                     f" | {max(rises, default=0.0):+.4f} | {spread:.4f} |")
    return "\n".join(lines)


def run(argv) -> int:
    p = common.ArgumentParser(prog="bench/recipe_grid.py", description=__doc__)
    p.add_argument("--data", default="split,cpu-track,mix", help="comma-separated: split, cpu-track, mix")
    p.add_argument("--budgets", default="", help="comma-separated seconds (default: each data set's, in BUDGETS)")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--flops_per_second", type=common.parse_finite, default=FLOPS_PER_SECOND,
                   help="model FLOP/s that turn a budget's seconds into --max_flops")
    p.add_argument("--jobs", type=common.parse_count, default=2, help="runs at once")
    p.add_argument("--threads", type=common.parse_count, default=1, help="threads per run")
    p.add_argument("--out", default="runs/recipe-grid")
    args = p.parse_args(argv)
    args.out = ROOT / args.out
    names = args.data.split(",")
    unknown = sorted(set(names) - set(BUDGETS))
    if unknown:
        raise ValueError(f"--data: unknown {unknown}; known: {', '.join(BUDGETS)}")
    if not SHARED.is_dir():
        raise ValueError(f"{SHARED} is absent: the grid is built from the shared data samples")
    chosen = [int(s) for s in args.budgets.split(",")] if args.budgets else None
    budgets = {n: tuple(s for s in BUDGETS[n] if chosen is None or s in chosen) for n in names}
    data = {n: build_data(n, ROOT / "data" / "grid") for n in names}
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(n, s, seed) for s in sorted({s for b in budgets.values() for s in b}) for n in names
            if s in budgets[n] for seed in seeds]  # the cheap budgets first
    cells = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, n, *data[n], s, seed, args) for n, s, seed in jobs]
        for future in concurrent.futures.as_completed(futures):
            cell = future.result()
            cells.append(cell)
            print(f"{cell['data']} {cell['seconds']} s seed {cell['seed']}: {cell['bpb']:.4f} BPB held out, "
                  f"{cell['steps']} steps, {cell['passes']:.2f} passes, stopped by {cell['stopped_by']}", flush=True)
    print(f"\nmodel FLOPs = seconds x {args.flops_per_second:.3g}; python bench/recipe_grid.py {' '.join(argv)}\n")
    print(table(cells, budgets))
    return 0


if __name__ == "__main__":
    sys.exit(common.run_main("recipe_grid.py", run))
