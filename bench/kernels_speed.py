"""
Each fused kernel of kernels.py (forward + backward) against its torch.compile'd PyTorch reference, at the
shapes of model.py's presets, on one CUDA GPU:

    python bench/kernels_speed.py                                  # small, medium, large, gpt2-124m
    python bench/kernels_speed.py --presets=small --batch_size=8   # one preset, a smaller batch

Prints one Markdown row per (preset, kernel): median milliseconds of `--iters` timed calls after three
warm-up calls (compilation and autotuning outside the clock), and the peak memory above the inputs.
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/NAME.py`: the project's modules are one folder up

import torch  # noqa: E402

import common  # noqa: E402
import kernels  # noqa: E402
import model  # noqa: E402  (the presets' shapes, so the benchmark follows them)


def make_parser() -> common.ArgumentParser:
    p = common.ArgumentParser(prog="bench/kernels_speed.py", description=__doc__)
    p.add_argument("--presets", default="small,medium,large,gpt2-124m", help="model.py presets, comma-separated")
    p.add_argument("--batch_size", type=common.parse_count, default=16)
    p.add_argument("--seq_len", type=common.parse_count, default=1024)
    p.add_argument("--vocab_size", type=common.parse_count, default=50304)
    p.add_argument("--iters", type=common.parse_count, default=20)
    return p


def time_fwd_bwd(fn, inputs, grad_out, iters):
    """Median milliseconds of fn(*inputs).backward(grad_out), and the peak memory above the inputs (MiB)."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def step():
        for t in leaves:
            t.grad = None
        out = fn(*inputs)
        out.backward(grad_out if out.dim() else None)

    for _ in range(3):  # compile and autotune outside the timed region
        step()
    torch.cuda.synchronize()
    for t in leaves:
        t.grad = None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return sorted(times)[len(times) // 2], peak


def bench_cases(config, n_tokens, dev="cuda"):
    """(name, triton fn, reference fn, inputs, grad_out) for one model shape, bf16 activations, fp32 weights."""
    bf16 = torch.bfloat16
    d, d_ff, vocab = config.n_embd, config.d_ff, config.vocab_size
    x = torch.randn(n_tokens, d, device=dev, dtype=bf16, requires_grad=True)
    norm_w = torch.ones(d, device=dev, requires_grad=True)
    h = torch.randn(n_tokens, d_ff, device=dev, dtype=bf16, requires_grad=True)
    head = (torch.randn(vocab, d, device=dev) / d ** 0.5).requires_grad_()
    targets = torch.randint(0, vocab, (n_tokens,), device=dev)
    cap = config.logit_softcap
    return [
        ("rms_norm", kernels.rms_norm_triton, kernels.rms_norm_reference, (x, norm_w), torch.randn_like(x)),
        ("relu2", kernels.relu2_triton, kernels.relu2_reference, (h,), torch.randn_like(h)),
        ("linear_cross_entropy", lambda a, b, c: kernels.linear_cross_entropy_triton(a, b, c, cap),
         lambda a, b, c: kernels.linear_cross_entropy_reference(a, b, c, cap), (x, head, targets), None),
    ]


def run(argv) -> None:
    args = make_parser().parse_args(argv)
    if min(args.batch_size, args.seq_len, args.vocab_size, args.iters) < 1:
        raise ValueError("--batch_size, --seq_len, --vocab_size and --iters must be positive")
    if not (torch.cuda.is_available() and kernels.HAS_TRITON):
        print("bench/kernels_speed.py: skipped, it needs a CUDA GPU and Triton (this machine has "
              f"cuda={torch.cuda.is_available()}, triton={kernels.HAS_TRITON}). The CPU tests are "
              "`python -m pytest tests/test_kernels.py`.")
        return
    n_tokens = args.batch_size * args.seq_len
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {kernels.triton.__version__}; "
          f"{n_tokens} tokens ({args.batch_size} x {args.seq_len}), bf16 activations, fp32 weights; "
          f"forward + backward, median of {args.iters}; peak = memory above the inputs")
    print("| preset | kernel | shape | triton ms | compiled ms | speed-up | triton peak MiB | compiled peak MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name in args.presets.split(","):
        config = model.build_config(name.strip(), args.vocab_size, args.seq_len)
        for kernel, fused, reference, inputs, grad_out in bench_cases(config, n_tokens):
            torch._dynamo.reset()
            t_fused, m_fused = time_fwd_bwd(fused, inputs, grad_out, args.iters)
            t_ref, m_ref = time_fwd_bwd(torch.compile(reference), inputs, grad_out, args.iters)
            shape = " x ".join(str(s) for s in inputs[0].shape)
            if kernel == "linear_cross_entropy":
                shape += f" @ {config.vocab_size}"
            print(f"| {name} | {kernel} | {shape} | {t_fused:.3f} | {t_ref:.3f} | {t_ref / t_fused:.2f}x "
                  f"| {m_fused:.0f} | {m_ref:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(common.run_main("bench/kernels_speed.py", run))
