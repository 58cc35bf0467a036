"""
What a run costs: FLOPs by Marin's (Levanter's) convention, parameters counted by the TinyStories
Hackathon's rules and their weight classes, device peaks, hardware FLOPs and MFU.

One convention for the whole project, so our records and Marin's share the FLOPs axis:

    forward FLOPs per token = n_layer * (  2 * d * (h*hd + 2*kv*hd)             QKV projections (GQA: kv heads)
                                         + 2 * (h*hd) * d                       attention output projection
                                         + 2 * (3 if GLU else 2) * d * d_ff     MLP
                                         + (2*S^2*h*hd + 3*S^2*h + 2*S^2*hd*h) / S )   scores, softmax, values:
                                                                                the full S x S map, no causal halving
                              + 2 * d * V                                       LM head, once
    (the embedding lookup and value-embedding lookups are free; norms, RoPE, activations are not counted)
    model FLOPs = 3 * forward FLOPs per token * training tokens      (backward = 2 x forward)
    hardware FLOPs = training seconds * devices * peak dense FLOP/s per device (bf16; TF32 for fp32 runs)
    MFU = model FLOPs / hardware FLOPs

Layers are counted as applied (n_layer), so layer reuse saves parameters but not FLOPs. Sliding windows and
document masks change nothing on this axis either: what they save is a separate, labelled figure
(attended_forward_flops_per_token: attention over the keys each query attends to), shown beside it.

    python flops.py                                   # the weight-class presets table (README)
    python flops.py --preset=small --tokens=1e9 --device="H100 SXM" --mfu=0.4
    python flops.py --n_layer=6 --n_embd=384 --n_head=6 --vocab_size=8192 --seq_len=512

Parameters are counted as the hackathon's rules say: every unique trainable weight times the number of
distinct times it takes part in the forward computation (detected from a real forward pass, so a reused
block cannot hide), a tied embedding/lm_head once, GQA not sharing. Weight classes: small <= 30M <
medium <= 60M < large <= 120M < open.
"""
import argparse
import contextlib
import pathlib
import platform
import re
import sys
import time

import torch

import common
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


def keys_per_query(seq_len: int, window: int = 0, doc_len: int = 0) -> float:
    """The mean number of keys a query of a seq_len window attends to under the model's masking rule
    (model.attention_mask): causal, within `window` tokens (0 = full) and, with doc_len > 0, within its
    document, for documents of doc_len tokens packed back to back (the window's last one cut short)."""
    def keys(n, w):  # queries at offsets 0..n-1 of one document: sum of min(offset + 1, w)
        return n * (n + 1) // 2 if n <= w else w * (w + 1) // 2 + (n - w) * w
    w = window or seq_len
    if doc_len > 0:
        whole, rest = divmod(seq_len, doc_len)
        return (whole * keys(doc_len, w) + keys(rest, w)) / seq_len
    return keys(seq_len, w) / seq_len


def attended_forward_flops_terms(config, seq_len: int, doc_len: int = 0) -> dict:
    """forward_flops_terms with the attention terms counted over the keys each query actually attends to:
    causal, each layer's window (long/short, the config's sizes) and, with doc_mask and doc_len > 0,
    documents of doc_len tokens. A separate, labelled figure of what masking saves; never the leaderboard
    axis (Marin's full S x S map, forward_flops_per_token). Without doc_len a document mask is assumed
    to save nothing (it depends on the data)."""
    c = _config(config)
    terms = forward_flops_terms(c, seq_len)
    window = {"L": c.window, "S": c.short_window}
    docs = doc_len if c.doc_mask else 0
    keys = sum(keys_per_query(seq_len, window[kind], docs) for kind in c.layer_windows)  # summed over layers
    h, hd = c.n_head, c.head_dim
    terms.update(attn_scores=round(keys * 2 * h * hd), attn_softmax=round(keys * 3 * h),
                 attn_values=round(keys * 2 * hd * h))
    return terms


def attended_forward_flops_per_token(config, seq_len: int, doc_len: int = 0) -> int:
    """Forward FLOPs per token with attention over the attended keys only (attended_forward_flops_terms):
    shown beside Marin's figure, never instead of it."""
    return sum(attended_forward_flops_terms(config, seq_len, doc_len).values())


def model_flops(config, seq_len: int, tokens: int) -> int:
    """Training FLOPs: 3 x forward FLOPs per token x training tokens (backward costs twice the forward)."""
    return 3 * forward_flops_per_token(config, seq_len) * int(tokens)


# -----------------------------------------------------------------------------
# Parameter counting (TinyStories Hackathon rules), detected from the autograd graph of a real forward,
# and the weight classes: like FLOPs, they are the accounting of a run

# Autograd nodes that only re-view or re-type a weight: a weight passing through them is not yet "used".
_VIEW_NODES = {"TBackward0", "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "ToCopyBackward0",
               "TransposeBackward0", "TransposeBackward1", "PermuteBackward0", "UnsqueezeBackward0",
               "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "AliasBackward0", "CloneBackward0",
               "ViewAsRealBackward0", "ViewAsComplexBackward0", "DetachBackward0"}
# Nodes that cut a weight into parts (a fused QKV matrix split in three is still used once).
_SPLIT_NODES = {"SplitBackward0", "SplitWithSizesBackward0", "UnbindBackward0"}
_SLICE_NODES = {"SliceBackward0", "SelectBackward0"}
# Row lookups with data indices (an embedding, written either way).
_LOOKUP_NODES = {"EmbeddingBackward0", "EmbeddingDenseBackward0", "IndexSelectBackward0", "IndexBackward0"}


def _autograd_consumers(root):
    """Reverse the autograd graph below `root`: node -> [(consumer node, output index of node it reads)]."""
    consumers, seen, stack = {}, {root}, [root]
    while stack:
        node = stack.pop()
        for child, output_nr in node.next_functions:
            if child is None:
                continue
            consumers.setdefault(child, []).append((node, output_nr))
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return consumers


def _part_region(node):
    """Which part of its input a split/slice node takes: identical parts used twice add up, different
    parts of one matrix (q, k, v of a fused QKV weight) are one use of it."""
    name = node.name()
    if name == "SliceBackward0":
        return (name, node._saved_dim, node._saved_start, node._saved_end, node._saved_step)
    if name == "SelectBackward0":
        return (name, node._saved_dim, node._saved_index)
    if name == "SplitBackward0":
        return (name, node._saved_dim, node._saved_split_size)
    if name == "SplitWithSizesBackward0":
        return (name, node._saved_dim, tuple(node._saved_split_sizes))
    return (name, node._saved_dim)


def _add(a, b):
    return a[0] + b[0], a[1] + b[1]


def _max(pairs):
    pairs = list(pairs)
    return (max(p[0] for p in pairs), max(p[1] for p in pairs)) if pairs else (0, 0)


def _edge_uses(consumer, consumers):
    """(embedding uses, other uses) that one consumer makes of a weight (or of a view of it)."""
    name = consumer.name()
    if name in _LOOKUP_NODES:
        return 1, 0
    if name in _VIEW_NODES or name in _SLICE_NODES:
        return _uses(consumer, consumers)
    if name in _SPLIT_NODES:  # a multi-output node: the most-used piece decides
        per_piece = {}
        for c, piece in consumers.get(consumer, []):
            per_piece[piece] = _add(per_piece.get(piece, (0, 0)), _edge_uses(c, consumers))
        return _max(per_piece.values())
    return 0, 1  # a matmul, a multiply, a fused kernel: the weight takes part in the computation once


def _uses(node, consumers):
    """(embedding uses, other uses) of the value `node` produces, found by following its consumers
    through views (which pass uses through) and parts (a split or slice: the most-used part counts)."""
    whole, parts = (0, 0), {}
    for consumer, _ in consumers.get(node, []):
        uses = _edge_uses(consumer, consumers)
        if consumer.name() in _SPLIT_NODES or consumer.name() in _SLICE_NODES:
            region = _part_region(consumer)
            parts[region] = _add(parts.get(region, (0, 0)), uses)
        else:
            whole = _add(whole, uses)
    return _add(whole, _max(parts.values()))


def _release_graph(graph: list, consumers: dict) -> None:
    """Free an autograd graph one node at a time, every node after all of its consumers, while what it
    consumes is still held. graph: [its root node], emptied here so that nothing else holds the root.
    Dropped at once, a node frees its saved activations from inside its own destructor, they free the
    nodes that made them, and so on down the model: a plain chain of 1,000 layers overflows the C stack
    (a segfault, no message)."""
    order = [node for node in graph if node is not None]
    graph.clear()
    waiting = {node: len(users) for node, users in consumers.items()}  # consumer edges not yet freed
    consumers.clear()
    ready = list(order)
    while ready:
        for child, _ in ready.pop().next_functions:
            if child is not None:
                waiting[child] -= 1
                if not waiting[child]:
                    ready.append(child)
                    order.append(child)
    waiting.clear()
    order.reverse()
    while order:
        order.pop()  # its consumers are gone and what it consumes is still held: nothing recurses


def count_params(model, seq_len: int = 16) -> dict:
    """Parameters by the TinyStories Hackathon rules: every unique trainable floating-point weight, times
    the number of distinct times it takes part in the forward computation, detected from the autograd
    graph of a real forward pass (so a block applied twice, by config or by hand, counts twice; a weight
    used through a functional call counts too). A tied embedding/lm_head matrix counts once: each
    embedding lookup of a matrix pairs with one output use of it. GQA is not sharing (one k/v projection
    is one use). Every unique weight counts at least once. Works on a model built on the meta device.
    Limit: a weight is followed through views, casts, splits and slices only; a weight transformed
    otherwise (say scaled) and the result then used twice counts once, at the transform.

    Returns {"counted", "unique", "embedding", "non_embedding"}: embedding = counted weights that are
    looked up as embeddings (token and value embeddings); non_embedding = counted - embedding."""
    model = getattr(model, "_orig_mod", model)   # torch.compile wrapper
    model = getattr(model, "module", model)      # DDP wrapper
    params = [p for p in model.parameters() if p.requires_grad and p.is_floating_point()]
    device = params[0].device if params else torch.device("cpu")
    block_size = getattr(getattr(model, "config", None), "block_size", seq_len)
    idx = torch.zeros(1, min(seq_len, block_size), dtype=torch.long, device=device)
    with torch.enable_grad():
        out = model(idx)
        graph = [(out if out.dim() == 0 else out.float().sum()).grad_fn]  # the root: _release_graph frees it
    del out
    consumers = _autograd_consumers(graph[0]) if graph[0] is not None else {}
    try:
        return _count(params, consumers)
    finally:
        _release_graph(graph, consumers)


def _count(params, consumers) -> dict:
    """count_params' sums over the weights, from the reversed autograd graph."""
    accumulators = {id(node.variable): node for node in consumers if node.name().endswith("AccumulateGrad")}
    counted = unique = embedding = 0
    for p in params:
        node = accumulators.get(id(p))
        embed_uses, other_uses = _uses(node, consumers) if node is not None else (0, 0)
        uses = max(1, embed_uses, other_uses)  # tie: an embedding lookup and an output use pair up as one
        n = p.numel()
        unique += n
        counted += n * uses
        if embed_uses:
            embedding += n * uses
    return {"counted": counted, "unique": unique, "embedding": embedding, "non_embedding": counted - embedding}


WEIGHT_CLASSES = (("small", 30_000_000), ("medium", 60_000_000), ("large", 120_000_000))


def weight_class(counted: int) -> str:
    """TinyStories Hackathon weight class: small <= 30M < medium <= 60M < large <= 120M < open."""
    for name, limit in WEIGHT_CLASSES:
        if counted <= limit:
            return name
    return "open"


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

# Peak dense TF32 FLOP/s per device, for fp32 runs: train.py (and bench/bench_step.py) let CUDA fp32 matmuls
# run as TF32 (torch.backends.cuda.matmul.allow_tf32), so an fp32 run is measured against the TF32 tensor
# cores, not the bf16 ones (half the bf16 figure on every part here). From NVIDIA's datasheets, which print
# TF32 "with sparsity": these are half those (H100 SXM/H200 989, H100 PCIe 756, A100 312, L40S 366, L4 120,
# A10 125 TFLOPS with sparsity). B200, MI300X and the TPUs are left out (no TF32 figure we could check, or
# TF32 not used by default there): an fp32 run on them records a measured fp32 matmul peak.
PEAK_TF32_FLOPS = {
    "H100 SXM": 494.7e12,
    "H100 PCIe": 378e12,
    "H200": 494.7e12,
    "A100": 156e12,
    "L4": 60e12,
    "L40S": 183e12,
    "A10": 62.5e12,
}

# How device names (torch.cuda.get_device_name(), or a table key) map to table entries. Order matters:
# device_name()'s CPU names (a Xeon "E5-2680 v4" is no TPU v4) and variants without a datasheet number in
# the table (H100/H200 NVL, A10G) are caught first as unknown.
_DEVICE_PATTERNS = [
    (r"^cpu\b", None),
    (r"\bNVL\b", None),
    (r"\bA10G\b", None),
    (r"\bGH200\b", "H100 SXM"),     # "NVIDIA GH200 480GB": Grace Hopper's GPU is an H100 (SXM-class datasheet)
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
    """The PEAK_BF16_FLOPS (and PEAK_TF32_FLOPS) key for a device name, or None when the table has no
    datasheet number for it."""
    for pattern, key in _DEVICE_PATTERNS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return key
    return None


def device_peak_flops(device_name: str | None = None, dtype: torch.dtype | None = torch.bfloat16
                      ) -> tuple[float | None, str]:
    """(peak dense FLOP/s, "datasheet") for a known device in the dtype a run computes in: bf16 (or fp16,
    the same tensor-core rate on these parts) from PEAK_BF16_FLOPS, fp32 (dtype None or float32: TF32
    matmuls) from PEAK_TF32_FLOPS; else (None, "unknown"), and the caller records measure_matmul_peak()
    instead, flagged as measured. Without a name: the current CUDA device, or the CPU (unknown)."""
    if device_name is None:
        if not torch.cuda.is_available():
            return None, "unknown"
        device_name = torch.cuda.get_device_name()
    table = PEAK_TF32_FLOPS if dtype in (None, torch.float32) else PEAK_BF16_FLOPS
    key = device_table_key(device_name)
    return (table[key], "datasheet") if key in table else (None, "unknown")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    """The name a record gives the device: the GPU's (which finds its datasheet peak), or the CPU's model."""
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


def measure_matmul_peak(device="cpu", dtype=None, seconds=1.0) -> float:
    """A short measured matmul throughput (FLOP/s) for devices without a datasheet peak: square matmuls in
    `dtype` (default bf16 on accelerators, float32 on CPU; train.py passes the dtype a run computes in, so
    a CPU run in bf16 is measured against the CPU's bf16 peak), best of several runs."""
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


def count_config_params(config) -> dict:
    """count_params of the GPT a configuration builds, on the meta device: no memory, no device work (on a GPU
    a real forward would build masks and compile kernels just to count)."""
    with torch.device("meta"):
        return count_params(model_lib.GPT(_config(config)))


def describe(config, seq_len: int) -> dict:
    """Parameter counts (detected on a meta-device model, no memory used) and FLOPs of one configuration."""
    c = _config(config)
    counts = count_config_params(c)
    return dict(counts, weight_class=weight_class(counts["counted"]),
                forward=forward_flops_per_token(c, seq_len), causal=causal_forward_flops_per_token(c, seq_len))


def presets_table(vocab_size=8192, seq_len=1024, names=("small", "medium", "large")) -> str:
    """The Markdown table of the weight-class presets (what README.md shows)."""
    lines = ["| preset | layers x width (heads/kv) | counted params | unique | embedding | class | "
             "FLOPs/token fwd (Marin) | training FLOPs/token (3x) | fwd, causal-halved |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for name in names:
        c = model_lib.build_config(name, vocab_size, seq_len)
        r = describe(c, seq_len)
        lines.append(f"| {name} | {c.n_layer} x {c.n_embd} ({c.n_head}/{c.n_kv_head}) | {r['counted']:,} | "
                     f"{r['unique']:,} | {r['embedding']:,} | {r['weight_class']} | {r['forward']:,} | "
                     f"{3 * r['forward']:,} | {r['causal']:,} |")
    return "\n".join(lines)


def model_table(config, seq_len, tokens, device, assumed_mfu, doc_len=0) -> str:
    """One configuration: parameters, class, FLOPs per token, and the cost of `tokens` training tokens.
    With a window or a document mask, also the attended figure (doc_len: documents assumed that long)."""
    r = describe(config, seq_len)
    terms = forward_flops_terms(config, seq_len)
    total = model_flops(config, seq_len, tokens)
    peak, source = device_peak_flops(device) if device else (None, "unknown")
    rows = [("counted params", f"{r['counted']:,}"), ("unique params", f"{r['unique']:,}"),
            ("embedding params (counted)", f"{r['embedding']:,}"), ("weight class", r["weight_class"]),
            ("forward FLOPs/token (Marin)", f"{r['forward']:,}")]
    rows += [(f"  {name}", f"{value:,}") for name, value in terms.items()]
    rows += [("forward FLOPs/token, causal-halved", f"{r['causal']:,}  (shown beside, never instead)")]
    if _config(config).attention_masked:
        what = "window/document mask" + (f", documents of {doc_len} tokens" if doc_len and _config(config).doc_mask
                                         else ", documents not assumed" if _config(config).doc_mask else "")
        rows.append((f"forward FLOPs/token, attended ({what})",
                     f"{attended_forward_flops_per_token(config, seq_len, doc_len):,}  (shown beside, never instead)"))
    rows += [
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


def make_parser() -> argparse.ArgumentParser:
    p = common.ArgumentParser(prog="flops.py", description=__doc__)
    p.add_argument("--preset", default=argparse.SUPPRESS, help=f"one of {', '.join(model_lib.PRESETS)}")
    p.add_argument("--vocab_size", type=common.parse_count, default=8192)
    p.add_argument("--block_size", type=common.parse_count, default=1024)
    p.add_argument("--seq_len", type=common.parse_count, default=0, help="default: block_size")
    p.add_argument("--tokens", type=common.parse_count, default=10 ** 9, help="training tokens to price")
    p.add_argument("--device", default="H100 SXM", help="a GPU name or one of: " + ", ".join(PEAK_BF16_FLOPS))
    p.add_argument("--mfu", type=common.parse_finite, default=0.4, help="assumed MFU for the time estimate")
    p.add_argument("--doc_len", type=common.parse_count, default=0,
                   help="with --doc_mask: documents assumed this many tokens long, for the attended FLOPs figure")
    common.add_dataclass_flags(p, model_lib.GPTConfig, skip=("vocab_size", "block_size"))
    return p


def config_from_args(args: argparse.Namespace) -> model_lib.GPTConfig:
    """The configuration the flags describe, through model.build_config (as train.py builds it)."""
    overrides = {f.name: getattr(args, f.name) for f in model_lib.fields(model_lib.GPTConfig) if hasattr(args, f.name)
                 and f.name not in ("vocab_size", "block_size")}
    return model_lib.build_config(getattr(args, "preset", None), args.vocab_size, args.block_size, **overrides)


def run(argv) -> int:
    args = make_parser().parse_args(argv)
    if not 0 < args.mfu <= 1:
        raise ValueError(f"--mfu={args.mfu}: must be in (0, 1]")
    if args.tokens < 1 or args.seq_len < 0:
        raise ValueError("--seq_len and --tokens must be positive")
    if not argv:
        print("weight-class presets, vocab 8192, sequence length 1024 (python flops.py):\n")
        print(presets_table(8192, 1024))
        return 0
    config = config_from_args(args)
    print(config)
    print(model_table(config, args.seq_len or config.block_size, args.tokens, args.device, args.mfu, args.doc_len))
    return 0


def main(argv=None) -> int:
    return common.run_main("flops.py", run, argv)


if __name__ == "__main__":
    sys.exit(main())
