"""
The CPU track's ablations, two or more seeds per row, scored by eval_bpb.py on a fixed text (the TinyStories
validation head). Prints the Markdown table the README shows. Re-running skips the runs already done (their
results.json hold the score). Two studies:

  --study=tokens  each technique on top of the recipe before them (BASE + ROWS), at a fixed token budget;
  --study=budget  each setting changed back from train.py's CPU defaults (BUDGET_BASE + BUDGET_ROWS), at the
                  CPU track's compute budget (2.2317e13 model FLOPs), where a bigger model pays for its size.

    python bench/cpu_track_ablation.py --data_dir=data/ts-sample-4k --eval_text=tinystories_hf_validation_head.txt
    python bench/cpu_track_ablation.py ... --study=budget --jobs=2 --threads=1
    python bench/cpu_track_ablation.py ... --rows=baseline,doc_mask --seeds=1,2,3 --jobs=2

Every run is `python train.py --data_dir=D BASE ROW --max_steps=0 --max_tokens=TOKENS --seed=S` (or
`--max_flops=FLOPS`), then `python eval_bpb.py --ckpt LAST --data EVAL_TEXT --eval_id
tinystories-valid-head --record OUT`. A token or FLOP budget makes each row's BPB independent of the
machine's speed and load.
"""
import concurrent.futures
import json
import os
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/NAME.py`: the project's modules are one folder up

import common  # noqa: E402

BASE = ["--preset=tiny", "--seq_len=256", "--batch_size=16", "--val_every=0", "--log_every=50"]
ROWS = {  # name -> (flags on top of BASE, what it is)
    "baseline": ([], "the recipe before this study (tiny preset, Muon 0.02, AdamW, WSD)"),
    "doc_mask": (["--doc_mask=1"], "attention stays inside each document"),
    "windows": (["--short_window=64", "--window_pattern=LSSL", "--window_warmup=0.3"],
                "short (64-token) windows on layers 2-3, growing over the first 30%"),
    "x0_mix": (["--x0_mix=1"], "the token embedding mixed into every block's input (learned)"),
    "value_residual": (["--value_residual=1"], "the first layer's values mixed into later layers' (learned)"),
    "unet": (["--unet=1"], "U-net skips from the first half's blocks to the second half's (learned)"),
    "momentum_warmup": (["--muon_momentum_warmup=100"], "Muon momentum 0.85 -> 0.95 over the first 100 steps"),
    "batch_8": (["--batch_size=8"], "half the batch (2,048 tokens), twice the steps"),
    "value_embeds": (["--value_embeds=2"], "two value-embedding tables (free in FLOPs: lookups)"),
    "untied": (["--tie_embeddings=0"], "token embedding and LM head untied (the embedding is a free lookup)"),
    "seq_128": (["--seq_len=128", "--batch_size=32"], "context 128 instead of 256, same tokens per step"),
    "full": (["--seq_len=128", "--batch_size=16", "--value_embeds=2", "--tie_embeddings=0", "--value_residual=1",
              "--x0_mix=1", "--unet=1", "--short_window=64", "--window_warmup=0.3", "--muon_momentum_warmup=100"],
             "every row above but doc_mask, at context 128 and 2,048 tokens per step (the CPU defaults until the budget study)"),
}


# train.py's DEVICE_DEFAULTS["cpu"], written out (what `python train.py --data_dir=D` runs on a CPU)
BUDGET_BASE = ["--preset=tiny", "--seq_len=0", "--batch_size=0", "--batch_tokens=4096", "--window_warmup=0.3", "--muon_momentum_warmup=100",
               "--weight_decay=0.1", "--adam_weight_decay=0.1", "--tie_embeddings=0", "--value_embeds=2", "--value_residual=1",
               "--x0_mix=1", "--unet=1", "--short_window=64", "--val_every=0", "--log_every=100"]
BUDGET_ROWS = {
    "defaults": ([], "train.py's CPU defaults (every kept row of the token study, and the three below)"),
    "batch_16": (["--batch_tokens=2048"], "2,048 tokens per step instead of 4,096 (twice the steps)"),
    "no_adam_wd": (["--adam_weight_decay=0"], "no weight decay on the embeddings and lm_head"),
    "no_reshuffle": (["--reshuffle=0"], "every epoch reads the windows in the same order"),
    "previous": (["--batch_tokens=2048", "--adam_weight_decay=0", "--reshuffle=0"],
                 "the CPU defaults before these three (the 2026-11-30 half-compute record's recipe)"),
    "bigram": (["--bigram_vocab=8192"], "a bigram-hash embedding of 8,192 rows (a free lookup)"),
    "dropout": (["--dropout=0.05"], "dropout 0.05 on the embedding and the blocks' outputs"),
}
STUDIES = {"tokens": (BASE, ROWS), "budget": (BUDGET_BASE, BUDGET_ROWS)}
BUDGET_FLOPS = 2.2317e13


def run_one(name, flags, seed, args) -> dict:
    out = pathlib.Path(args.out) / f"{name}-seed{seed}"
    results = out / "results.json"
    if results.exists() and "tinystories-valid-head" in json.loads(results.read_text()).get("eval", {}):
        return json.loads(results.read_text())
    ckpt = pathlib.Path(args.out) / "checkpoints" / f"{name}-seed{seed}"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for path in (out, ckpt):  # an interrupted run starts over
        subprocess.run(["rm", "-rf", str(path)], check=True)
    base = STUDIES[args.study][0]
    budget = f"--max_tokens={args.tokens}" if args.study == "tokens" else f"--max_flops={BUDGET_FLOPS}"
    train = [sys.executable, "train.py", f"--data_dir={args.data_dir}", *base, *flags, "--max_steps=0",
             budget, f"--seed={seed}", f"--name=ablation-{name}-{seed}",
             f"--out_dir={out}", f"--ckpt_dir={ckpt}"]
    subprocess.run(train, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    last = sorted(ckpt.glob("step_*.pt"), key=lambda p: int(p.stem[5:]))[-1]
    # eval_bpb.py scores at the checkpoint's own context (seq_len=0 takes it from the data)
    subprocess.run([sys.executable, "eval_bpb.py", "--ckpt", str(last), "--data", args.eval_text,
                    "--eval_id", "tinystories-valid-head", "--record", str(out)], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads(results.read_text())


def table(scores: dict, rows: dict = ROWS, reference: str = "baseline") -> str:
    base = statistics.mean(scores[reference]) if scores.get(reference) else None
    lines = [f"| row | what | BPB (mean ± sd) | seeds | vs {reference} |", "|---|---|---:|---|---:|"]
    for name, values in scores.items():
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        delta = f"{statistics.mean(values) - base:+.4f}" if base is not None and name != reference else ""
        what = rows[name][1] if name in rows else name
        lines.append(f"| {name} | {what} | {statistics.mean(values):.4f} ± {sd:.4f} | "
                     f"{', '.join(f'{v:.4f}' for v in values)} | {delta} |")
    return "\n".join(lines)


def run(argv) -> int:
    p = common.ArgumentParser(prog="bench/cpu_track_ablation.py", description=__doc__)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--eval_text", required=True, help="the TinyStories validation head (a text file)")
    p.add_argument("--study", default="tokens", choices=sorted(STUDIES))
    p.add_argument("--rows", default="", help="comma-separated rows (default: all of the study's)")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=FLAGS",
                   help='another row, e.g. --extra "full=--doc_mask=1 --x0_mix=1"')
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--tokens", type=common.parse_count, default=1_228_800, help="training tokens per run")
    p.add_argument("--jobs", type=common.parse_count, default=1, help="runs at once")
    p.add_argument("--threads", type=common.parse_count, default=2, help="threads per run")
    p.add_argument("--out", default="", help="default runs/cpu-track-ablation (tokens), runs/cpu-track-budget")
    args = p.parse_args(argv)
    args.out = args.out or ("runs/cpu-track-ablation" if args.study == "tokens" else "runs/cpu-track-budget")
    known = STUDIES[args.study][1]
    rows = {name: known[name][0] for name in (args.rows or ",".join(known)).split(",") if name in known}
    unknown = sorted(set((args.rows or "").split(",")) - set(known) - {""})
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known: {', '.join(known)}")
    for extra in args.extra:
        name, _, flags = extra.partition("=")
        rows[name] = flags.split()
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(name, flags, seed) for seed in seeds for name, flags in rows.items()]
    scores = {name: [] for name in rows}
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_one, name, flags, seed, args): (name, seed) for name, flags, seed in jobs}
        for future in concurrent.futures.as_completed(futures):
            name, seed = futures[future]
            bpb = future.result()["eval"]["tinystories-valid-head"]["bpb"]
            print(f"{name} seed {seed}: {bpb:.4f}", flush=True)
    for name, flags, seed in jobs:  # in row order, whatever order they finished in
        scores[name].append(run_one(name, flags, seed, args)["eval"]["tinystories-valid-head"]["bpb"])
    budget = f"{args.tokens:,} training tokens" if args.study == "tokens" else f"{BUDGET_FLOPS:.4e} model FLOPs"
    print(f"\n{budget} per run; python bench/cpu_track_ablation.py {' '.join(argv)}\n")
    print(table(scores, known, "baseline" if args.study == "tokens" else "defaults"))
    return 0


if __name__ == "__main__":
    sys.exit(common.run_main("cpu_track_ablation.py", run))
