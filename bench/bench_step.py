"""
The training step's speed, one GPU (or the CPU): tokens/s, MFU, peak memory and where a step's time goes.

    python bench/bench_step.py                                   # CUDA: small, medium, large, gpt2-124m
    python bench/bench_step.py --device=cpu                      # CPU: the tiny preset and the CPU-track shape
    python bench/bench_step.py --presets=small --steps=50 --out=bench.json

Each row builds the preset with train.py's own pieces (model.build_config, train.build_optimizers,
train.compile_model, train.reduce_and_clip_gradients) on random tokens, so it measures the step, not the
data. The warm-up (compilation) is outside the clock. Two timed passes:
  throughput: `steps` steps back to back, one sync at the end -> tokens/s and MFU (Marin's convention, and
              with the attention map halved as a causal kernel computes it; flops.py);
  split:      `steps` steps with a device sync between phases -> ms in data (host-to-device copy of a batch),
              forward+backward, optimizer (gradient reduction, clipping, Muon + AdamW). The syncs make these
              add up to a little more than the throughput pass's step.
Under 8 minutes on one H100 with the defaults.
"""
import pathlib
import resource
import sys
import time
import types

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/NAME.py`: the project's modules are one folder up

import common  # noqa: E402
import flops  # noqa: E402
import train  # noqa: E402
from model import GPT, build_config  # noqa: E402

# (preset, model overrides, vocabulary, sequence length, batch size) per row
GPU_ROWS = [("small", {}, 8192, 1024, 32), ("medium", {}, 8192, 1024, 32), ("large", {}, 8192, 1024, 16),
            ("gpt2-124m", {}, 50304, 1024, 16)]
CPU_ROWS = [("tiny", {}, 4096, 256, 16),
            ("small", dict(n_layer=4, n_embd=128, n_head=4, n_kv_head=2), 2048, 256, 16)]


def build(preset, overrides, vocab, seq_len, batch_size, device, compile_, precision):
    # Each row compiles afresh. Without this, dynamo keeps every row's graphs on the same code objects
    # (train.newton_schulz, GPT.forward): Newton-Schulz takes one cache entry per matrix shape, 4 per preset,
    # and past torch._dynamo.config.recompile_limit (8) a later row's Newton-Schulz silently runs eagerly.
    torch._dynamo.reset()
    hp = train.Hyperparameters(preset=preset, model=dict(overrides), seq_len=seq_len, batch_size=batch_size,
                               compile=compile_, precision=precision)
    config = build_config(preset, vocab, seq_len, **overrides)
    torch.manual_seed(0)
    model = GPT(config).to(device)
    optimizers = train.build_optimizers(model, hp, 0, 1, device)
    compiled = train.compile_model(hp, model, optimizers[1])
    run = types.SimpleNamespace(optimizers=optimizers, world_size=1, device=device, hp=hp,
                                amp_dtype=train.autocast_dtype(precision, device))
    host = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(0))
    if device.type == "cuda":
        host = host.pin_memory()
    return config, model, compiled, run, host


def one_step(model, compiled, run, host, device, timings=None):
    t = time.perf_counter()
    batch = host.to(device, non_blocking=True)
    autocast = train.Run.autocast(run)  # train.py's rule; it reads only run.device and run.amp_dtype
    if timings is not None:
        common.synchronize(device)
        timings["data"] += time.perf_counter() - t
        t = time.perf_counter()
    with autocast:
        loss = compiled(batch[:, :-1], batch[:, 1:])
    loss.backward()
    if timings is not None:
        common.synchronize(device)
        timings["forward+backward"] += time.perf_counter() - t
        t = time.perf_counter()
    muon_grads, _ = train.reduce_and_clip_gradients(run)
    run.optimizers[0].step()
    run.optimizers[1].step(muon_grads)
    model.zero_grad(set_to_none=True)
    if timings is not None:
        common.synchronize(device)
        timings["optimizer"] += time.perf_counter() - t
    return loss


def bench_row(row, device, steps, compile_, precision):
    preset, overrides, vocab, seq_len, batch_size = row
    config, model, compiled, run, host = build(preset, overrides, vocab, seq_len, batch_size, device, compile_,
                                               precision)
    for _ in range(3):  # warm-up: compilation, autotuning, allocator
        one_step(model, compiled, run, host, device)
    common.synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step(model, compiled, run, host, device)
    common.synchronize(device)
    seconds = time.perf_counter() - t0
    timings = {"data": 0.0, "forward+backward": 0.0, "optimizer": 0.0}
    for _ in range(steps):
        one_step(model, compiled, run, host, device, timings)
    tokens = steps * batch_size * seq_len
    device_name = flops.device_name(device)
    peak, source = train.peak_flops_per_device(device, device_name, run.amp_dtype)
    marin = flops.model_flops(config, seq_len, tokens)
    causal = 3 * flops.causal_forward_flops_per_token(config, seq_len) * tokens
    memory = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else
              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    with torch.device("meta"):
        params = flops.count_params(GPT(config))["counted"]
    return {"preset": preset, "overrides": overrides, "vocab_size": vocab, "seq_len": seq_len, "batch_size": batch_size,
            "params": params, "device": device_name, "peak_flops": peak, "peak_source": source, "steps": steps,
            "compile": compile_, "precision": "bf16" if run.amp_dtype else "fp32", "tokens_per_s": tokens / seconds,
            "ms_per_step": 1000 * seconds / steps,
            "mfu_marin": marin / (seconds * peak), "mfu_causal": causal / (seconds * peak),
            "peak_memory_mib": memory / 2 ** 20, **{f"ms_{k}": 1000 * v / steps for k, v in timings.items()}}


def table(results) -> str:
    lines = ["| preset | params | batch x seq | tokens/s | ms/step | MFU (Marin) | MFU (causal) | peak MiB | "
             "ms data | ms fwd+bwd | ms optimizer |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        name = r["preset"] + (" " + ",".join(f"{k}={v}" for k, v in r["overrides"].items()) if r["overrides"] else "")
        lines.append(f"| {name} | {r['params']:,} | {r['batch_size']} x {r['seq_len']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['ms_per_step']:.1f} | {100 * r['mfu_marin']:.1f}% | {100 * r['mfu_causal']:.1f}% | "
                     f"{r['peak_memory_mib']:,.0f} | {r['ms_data']:.2f} | {r['ms_forward+backward']:.1f} | "
                     f"{r['ms_optimizer']:.1f} |")
    return "\n".join(lines)


def run(argv) -> int:
    p = common.ArgumentParser(prog="bench/bench_step.py", description=__doc__)
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--presets", default="", help="comma-separated presets (default: the device's rows)")
    p.add_argument("--steps", type=common.parse_count, default=0, help="timed steps per pass (default 30 GPU, 10 CPU)")
    p.add_argument("--compile", type=common.parse_bool, default=True)
    p.add_argument("--precision", default="auto", help="auto | bf16 | fp32, as train.py's --precision")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    args = p.parse_args(argv)
    device = common.resolve_device(args.device)
    rows = GPU_ROWS if device.type == "cuda" else CPU_ROWS
    if args.presets:
        wanted = args.presets.split(",")
        rows = [r for r in GPU_ROWS + CPU_ROWS if r[0] in wanted and not r[1]] or \
            [(name, {}, 8192, 1024, 16) for name in wanted]
    steps = args.steps or (30 if device.type == "cuda" else 10)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    results = []
    for row in rows:
        results.append(bench_row(row, device, steps, args.compile, args.precision))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print(f"\n{results[0]['device']}, torch {torch.__version__}, compile={args.compile}, "
          f"precision={results[0]['precision']}, {steps} timed steps per "
          f"pass, peak {results[0]['peak_flops']:.3e} FLOP/s ({results[0]['peak_source']})\n")
    print(table(results))
    if args.out:
        common.write_json_atomic(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(common.run_main("bench_step.py", run))
