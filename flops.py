"""
FLOPs by Marin's (Levanter's) convention, device peaks, hardware FLOPs and MFU.

One convention for the whole project, so our records and Marin's share the FLOPs axis:

    forward FLOPs per token = n_layer * (  2 * d * (h*hd + 2*kv*hd)             QKV projections (GQA: kv heads)
                                         + 2 * (h*hd) * d                       attention output projection
                                         + 2 * (3 if GLU else 2) * d * d_ff     MLP
                                         + (2*S^2*h*hd + 3*S^2*h + 2*S^2*hd*h) / S )   scores, softmax, values:
                                                                                the full S x S map, no causal halving
                              + 2 * d * V                                       LM head, once
    (the embedding lookup and value-embedding lookups are free; norms, RoPE, activations are not counted)
    model FLOPs = 3 * forward FLOPs per token * training tokens      (backward = 2 x forward)
    hardware FLOPs = training seconds * devices * peak dense bf16 FLOP/s per device
    MFU = model FLOPs / hardware FLOPs

Layers are counted as applied (n_layer), so layer reuse saves parameters but not FLOPs.

    python flops.py                                   # the weight-class presets table (README)
    python flops.py --preset=small --tokens=1e9 --device="H100 SXM" --mfu=0.4
    python flops.py --n_layer=6 --n_embd=384 --n_head=6 --vocab_size=8192 --seq_len=512
"""
import re
import sys
import time
from dataclasses import asdict

import torch

import model as model_lib

# -----------------------------------------------------------------------------
# Forward FLOPs per token


def _config(config):
    """A GPTConfig, from itself or from its asdict() (records store the dict)."""
    if isinstance(config, model_lib.GPTConfig):
        return config
    return model_lib.config_from_dict(dict(config))


def forward_flops_terms(config, seq_len: int) -> dict:
    """Marin's forward FLOPs per token, term by term (all layers summed); the values add up to
    forward_flops_per_token."""
    c = _config(config)
    L, d, h, kv, hd, S = c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.head_dim, seq_len
    glu = c.mlp == "swiglu"
    return {
        "qkv": L * 2 * d * (h * hd + 2 * kv * hd),
        "attn_out": L * 2 * (h * hd) * d,
        "mlp": L * 2 * (3 if glu else 2) * d * c.d_ff,
        "attn_scores": L * (2 * S * S * h * hd) // S,   # Q K^T over the full S x S map
        "attn_softmax": L * (3 * S * S * h) // S,        # exp, sum, divide
        "attn_values": L * (2 * S * S * hd * h) // S,    # softmax(QK^T) V
        "lm_head": 2 * d * c.vocab_size,
    }


def forward_flops_per_token(config, seq_len: int) -> int:
    """Forward FLOPs per token by Marin's convention (the project's one convention: records say "marin")."""
    return sum(forward_flops_terms(config, seq_len).values())


def causal_forward_flops_per_token(config, seq_len: int) -> int:
    """The same with the attention map halved, as a causal kernel computes it. Shown beside Marin's
    figure, never instead of it."""
    t = forward_flops_terms(config, seq_len)
    attention = t["attn_scores"] + t["attn_softmax"] + t["attn_values"]
    return sum(t.values()) - attention + attention // 2


def model_flops(config, seq_len: int, tokens: int) -> int:
    """Training FLOPs: 3 x forward FLOPs per token x training tokens (backward costs twice the forward)."""
    return 3 * forward_flops_per_token(config, seq_len) * int(tokens)


# -----------------------------------------------------------------------------
# Devices

# Peak dense bf16 FLOP/s per device, the values Marin uses.
PEAK_BF16_FLOPS = {
    "H100 SXM": 989.5e12,
    "H100 PCIe": 756.5e12,
    "H200": 989.5e12,
    "A100": 312e12,
    "L4": 121e12,
    "L40S": 366.5e12,
    "A10": 125e12,
    "B200": 2.5e15,
    "MI300X": 1307.4e12,
    "TPU v4": 275e12,
    "TPU v5p": 459e12,
    "TPU v6e": 918e12,
}

# How device names (torch.cuda.get_device_name(), or a table key) map to table entries. Order matters:
# variants without a datasheet number in the table (H100/H200 NVL, A10G) are caught first as unknown.
_DEVICE_PATTERNS = [
    (r"\bNVL\b", None),
    (r"\bA10G\b", None),
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe"),
    (r"\bH100\b", "H100 SXM"),      # "NVIDIA H100 80GB HBM3" is the SXM part
    (r"\bH200\b", "H200"),
    (r"\bA100\b", "A100"),
    (r"\bL40S\b", "L40S"),
    (r"\bL4\b", "L4"),
    (r"\bA10\b", "A10"),
    (r"\bB200\b", "B200"),
    (r"\bMI300X\b", "MI300X"),
    (r"\bv4\b", "TPU v4"),
    (r"\bv5p\b", "TPU v5p"),
    (r"\bv6e\b", "TPU v6e"),
]


def device_table_key(device_name: str):
    """The PEAK_BF16_FLOPS key for a device name, or None when the table has no datasheet number for it."""
    for pattern, key in _DEVICE_PATTERNS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return key
    return None


def device_peak_flops(device_name: str | None = None) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, "datasheet") for a known device, else (None, "unknown"): the caller then
    records measure_matmul_peak() instead, flagged as measured. Without a name: the current CUDA device,
    or the CPU (unknown)."""
    if device_name is None:
        if not torch.cuda.is_available():
            return None, "unknown"
        device_name = torch.cuda.get_device_name()
    key = device_table_key(device_name)
    return (PEAK_BF16_FLOPS[key], "datasheet") if key else (None, "unknown")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_matmul_peak(device="cpu", dtype=None, seconds=1.0) -> float:
    """A short measured matmul throughput (FLOP/s) for devices without a datasheet peak: square matmuls
    of bf16 on accelerators (float32 on CPU, where bf16 matmuls are usually slower), best of several runs."""
    device = torch.device(device)
    dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up (kernel selection, thread pool start)
    _sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        _sync(device)
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def hardware_flops(seconds: float, n_devices: int, peak_per_device: float) -> float:
    """What the hardware could have done: training seconds x devices x peak FLOP/s per device."""
    return float(seconds) * int(n_devices) * float(peak_per_device)


def mfu(model_flops: float, hardware_flops: float) -> float:
    """Model FLOPs utilisation: model FLOPs / hardware FLOPs."""
    return float(model_flops) / float(hardware_flops)


# -----------------------------------------------------------------------------
# Command line


def _human(x: float, unit: str = "") -> str:
    for scale, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def _human_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def describe(config, seq_len: int) -> dict:
    """Parameter counts (detected on a meta-device model, no memory used) and FLOPs of one configuration."""
    c = _config(config)
    with torch.device("meta"):
        counts = model_lib.count_params(model_lib.GPT(c))
    return dict(counts, weight_class=model_lib.weight_class(counts["counted"]),
                forward=forward_flops_per_token(c, seq_len), causal=causal_forward_flops_per_token(c, seq_len))


def presets_table(vocab_size=8192, seq_len=1024, names=("small", "medium", "large")) -> str:
    """The Markdown table of the weight-class presets (what README.md shows)."""
    lines = ["| preset | layers x width (heads/kv) | counted params | unique | embedding | class | "
             "FLOPs/token fwd (Marin) | training FLOPs/token (3x) | fwd, causal-halved |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for name in names:
        c = model_lib.preset_config(name, vocab_size, seq_len)
        r = describe(c, seq_len)
        lines.append(f"| {name} | {c.n_layer} x {c.n_embd} ({c.n_head}/{c.n_kv_head}) | {r['counted']:,} | "
                     f"{r['unique']:,} | {r['embedding']:,} | {r['weight_class']} | {r['forward']:,} | "
                     f"{3 * r['forward']:,} | {r['causal']:,} |")
    return "\n".join(lines)


def model_table(config, seq_len, tokens, device, assumed_mfu) -> str:
    """One configuration: parameters, class, FLOPs per token, and the cost of `tokens` training tokens."""
    r = describe(config, seq_len)
    terms = forward_flops_terms(config, seq_len)
    total = model_flops(config, seq_len, tokens)
    peak, source = device_peak_flops(device) if device else (None, "unknown")
    rows = [("counted params", f"{r['counted']:,}"), ("unique params", f"{r['unique']:,}"),
            ("embedding params (counted)", f"{r['embedding']:,}"), ("weight class", r["weight_class"]),
            ("forward FLOPs/token (Marin)", f"{r['forward']:,}")]
    rows += [(f"  {name}", f"{value:,}") for name, value in terms.items()]
    rows += [("forward FLOPs/token, causal-halved", f"{r['causal']:,}  (shown beside, never instead)"),
             ("training FLOPs/token (3x forward)", f"{3 * r['forward']:,}"),
             ("nanoGPT estimate 6N + 12*L*d*S, N non-embedding",
              f"{6 * r['non_embedding'] + 12 * _config(config).n_layer * _config(config).n_embd * seq_len:,}"),
             (f"model FLOPs for {tokens:,} tokens", f"{total:.4g}")]
    if peak is None:
        rows.append((f"device {device!r}", "no datasheet peak (see --device); a run records a measured matmul peak"))
    else:
        seconds = total / (peak * assumed_mfu)
        rows += [(f"device {device} peak bf16 ({source})", _human(peak, "FLOP/s")),
                 (f"time on 1 device at MFU {assumed_mfu:g}", _human_time(seconds)),
                 (f"time on 8 devices at MFU {assumed_mfu:g}", _human_time(seconds / 8))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("settings: --preset=NAME (" + ", ".join(model_lib.PRESETS) + "), --seq_len (default block_size), "
              "--tokens (default 1e9), --device (a PEAK_BF16_FLOPS key or GPU name, default \"H100 SXM\"), "
              "--mfu (default 0.4), and any GPTConfig field (--n_layer=8 ...)")
        print("devices: " + ", ".join(PEAK_BF16_FLOPS))
        return 0
    types = model_lib.config_field_types()
    extra = {"preset": str, "seq_len": int, "tokens": int, "device": str, "mfu": float}
    try:
        opts = model_lib.parse_overrides(argv, {**types, **extra})
        assumed_mfu = opts.get("mfu", 0.4)
        if not 0 < assumed_mfu <= 1:
            raise ValueError(f"--mfu={assumed_mfu}: must be in (0, 1]")
        if opts.get("seq_len", 1) < 1 or opts.get("tokens", 1) < 1:
            raise ValueError("--seq_len and --tokens must be positive")
        if not any(k in opts for k in types) and "preset" not in opts:
            print("weight-class presets, vocab 8192, sequence length 1024 (python flops.py):\n")
            print(presets_table(8192, 1024))
            return 0
        preset = opts.pop("preset", None)
        settings = {k: opts.pop(k) for k in list(opts) if k in types}
        if preset is not None:
            base = asdict(model_lib.preset_config(preset, settings.pop("vocab_size", 8192),
                                                  settings.pop("block_size", 1024)))
            config = model_lib.GPTConfig(**{**base, **settings})
        else:
            config = model_lib.GPTConfig(**settings)
        seq_len = opts.get("seq_len", config.block_size)
    except ValueError as e:
        print(f"error: flops.py: {e}", file=sys.stderr)
        return 2
    print(config)
    print(model_table(config, seq_len, opts.get("tokens", 10 ** 9), opts.get("device", "H100 SXM"), assumed_mfu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
