"""
The GPT model: a small modern decoder-only transformer, its configurations, batched KV-cache
generation and checkpoints.

    from model import GPT, build_config
    model = GPT(build_config("small", vocab_size=8192, block_size=1024, n_layer=8))
    loss = model(idx, targets)                          # mean cross-entropy, targets == -1 ignored
    nats = model(idx, targets, reduction="none")        # float32 (B, T) per-token losses, for BPB

`python flops.py --preset=small --n_layer=8` prints a configuration, its parameter count and FLOPs.
From the command line (see "Command line" at the end):

    python model.py sample --ckpt CKPT --prompt "Once upon a time"   # stories, printed as they are written
    python model.py export --ckpt CKPT --out DIR                      # a Hugging Face folder (export.py)

Every modern part is a switch in GPTConfig: RoPE, RMSNorm (or LayerNorm), QK-norm, grouped-query
attention, ReLU^2 / GELU / SwiGLU MLP, no biases, zero-initialised output projections, logit
soft-capping, tied or untied embeddings, layer reuse and value embeddings (modded-nanogpt style), and from
modded-nanogpt's record line (all off by default): document masking and sliding windows with a long/short
layer pattern (records #12, #13 and the long-short window record; see "Attention masks"), the embedding
mixed into every block's input (x0_mix) and the value residual (#9), U-net skips (#11).
Whether kernels.py's fused ops run is a runtime setting (GPT.use_kernels), not part of the config, so
it is neither saved in checkpoints nor in records. The file knows nothing about data files or
distributed training.
"""
import codecs
import contextlib
import importlib
import os
import pathlib
import re
import sys
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # model.py in a package: a Hugging Face export folder that transformers loads as remote code (export.py)
    from .kernels import linear_cross_entropy, triton_supports
except ImportError:  # model.py as the repository's top-level module
    from kernels import linear_cross_entropy, triton_supports

# -----------------------------------------------------------------------------
# Configuration


@dataclass
class GPTConfig:
    vocab_size: int = 50304      # padded vocabulary (see padded_vocab_size); the tokenizer may use fewer
    n_layer: int = 12            # blocks applied, in order (with layer reuse some are the same block)
    n_head: int = 6              # query heads
    n_kv_head: int = 6           # key/value heads; fewer than n_head = grouped-query attention
    n_embd: int = 768
    block_size: int = 1024       # longest sequence (RoPE tables are precomputed up to it)
    tie_embeddings: bool = False # lm_head shares the token embedding matrix
    mlp: str = "relu2"           # "relu2" | "gelu" | "swiglu" (the GLU variant: three matrices)
    mlp_ratio: float = 4.0       # d_ff = round(mlp_ratio * n_embd)
    rope: bool = True            # rotary position embeddings; False = learned absolute positions
    rope_base: float = 10000.0
    qk_norm: bool = True         # RMSNorm on each head's queries and keys before attention
    norm: str = "rmsnorm"        # "rmsnorm" | "layernorm"
    logit_softcap: float = 15.0  # logits = c * tanh(logits / c); 0 disables
    n_unique_layers: int = 0     # 0 = n_layer; k < n_layer = layer reuse (layer i applies unique block i % k)
    value_embeds: int = 0        # value-embedding tables, each feeding the v of an early and a late layer
    bigram_vocab: int = 0        # rows of a hashed (previous, current) token-pair embedding added to the token
                                 # embedding (modded-nanogpt's bigram hash; a lookup, free in FLOPs); 0 = off
    bias: bool = False           # biases in every linear layer and norm (GPT-2 style); off in modern models
    zero_init: bool = True       # zero-initialise output projections (attention, MLP, untied lm_head)
    dropout: float = 0.0         # in training, on the embedding output and each block's attention and MLP
                                 # outputs (nanoGPT's places): for data seen several times; 0 = off
    # Attention masks (see "Attention masks" below; the same semantics on every path, generation included)
    doc_mask: bool = False       # attention stays inside each document (documents split at delimiter_id)
    delimiter_id: int = -1       # the document delimiter token (train.py sets it from the data); -1 = none
    window: int = 0              # sliding window of the long layers, in tokens (keys i-window < j <= i); 0 = full
    short_window: int = 0        # window of the short layers; 0 = no short layers (they use `window`)
    window_pattern: str = "LSSL" # L(ong)/S(hort) per applied layer, repeated over n_layer; used when short_window > 0
    # Skip connections (modded-nanogpt records #9 and #11), each with learned scalars
    x0_mix: bool = False         # block input = a_i * x + b_i * x0, x0 the embedding output (a=1, b=0 at init)
    value_residual: bool = False # layer i > 0 values v += l_i * (v_first - v), v_first the first layer's (l=0.5)
    unet: bool = False           # first n_layer//2 block outputs added, weighted (1 at init), to the last n_layer//2 inputs

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def d_ff(self) -> int:
        return round(self.mlp_ratio * self.n_embd)

    @property
    def unique_layers(self) -> int:
        return self.n_unique_layers or self.n_layer

    @property
    def layer_windows(self) -> list[str]:
        """"L" or "S" for each applied layer: which of the two windows it attends with (all "L" without
        short layers)."""
        if not self.short_window:
            return ["L"] * self.n_layer
        return [self.window_pattern[i % len(self.window_pattern)] for i in range(self.n_layer)]

    @property
    def attention_masked(self) -> bool:
        """Whether attention is anything but plain causal (a document mask or a window)."""
        return self.doc_mask or self.window > 0 or "S" in self.layer_windows

    def __post_init__(self):
        if min(self.vocab_size, self.n_layer, self.n_head, self.n_kv_head, self.n_embd, self.block_size) < 1:
            # checked first: the divisibility checks below would divide by zero
            raise ValueError("GPTConfig: vocab_size, n_layer, n_head, n_kv_head, n_embd and block_size must be positive")
        problems = []
        if self.n_embd % self.n_head:
            problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            problems.append(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.rope and self.head_dim % 2:
            problems.append(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.mlp not in ("relu2", "gelu", "swiglu"):
            problems.append(f"mlp must be relu2, gelu or swiglu, got {self.mlp!r}")
        if self.norm not in ("rmsnorm", "layernorm"):
            problems.append(f"norm must be rmsnorm or layernorm, got {self.norm!r}")
        if not 0 <= self.n_unique_layers <= self.n_layer:
            problems.append(f"n_unique_layers must be between 0 and n_layer ({self.n_layer})")
        if self.bigram_vocab < 0 or self.bigram_vocab == 1:
            problems.append(f"bigram_vocab must be 0 (off) or at least 2, got {self.bigram_vocab}")
        if not 0 <= self.value_embeds <= self.n_layer:
            problems.append(f"value_embeds must be between 0 and n_layer ({self.n_layer})")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.logit_softcap < 0:
            problems.append("logit_softcap must be >= 0 (0 disables it)")
        if self.d_ff < 1:
            problems.append(f"mlp_ratio ({self.mlp_ratio}) must give d_ff = round(mlp_ratio * n_embd) >= 1")
        if self.rope and not self.rope_base > 0:
            problems.append(f"rope_base must be > 0, got {self.rope_base}")
        if not -1 <= self.delimiter_id < self.vocab_size:
            problems.append(f"delimiter_id must be -1 (none) or a token id below vocab_size, got {self.delimiter_id}")
        if self.doc_mask and self.delimiter_id < 0:
            problems.append("doc_mask needs the delimiter token: set delimiter_id")
        if self.window < 0 or self.short_window < 0:
            problems.append("window and short_window must be >= 0 (0 = full / no short layers)")
        if not self.window_pattern or set(self.window_pattern) - set("LS"):
            problems.append(f"window_pattern must be a non-empty string of L and S, got {self.window_pattern!r}")
        if (self.value_residual or self.unet) and self.n_layer < 2:
            problems.append("value_residual and unet need n_layer >= 2")
        if problems:
            raise ValueError("GPTConfig: " + "; ".join(problems))


# Fields that older checkpoints and records carry but that are no longer part of the architecture
# ("use_kernels" became the runtime setting GPT.use_kernels).
RETIRED_FIELDS = ("use_kernels",)


def config_from_dict(d: dict) -> GPTConfig:
    """The GPTConfig a checkpoint or record stored with asdict(); unknown keys are an error, not ignored."""
    d = {k: v for k, v in d.items() if k not in RETIRED_FIELDS}
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown GPTConfig field(s) {unknown}; known: {sorted(known)}")
    return GPTConfig(**d)


# Presets. The weight-class presets sit just under their limits for the TinyStories default tokenizer
# (bpe:8192, untied embeddings); `python flops.py` prints their exact counts.
# The GPU presets carry the skip connections of modded-nanogpt's records #9 and #11 (x0 mixing, value
# residual, U-net), which cost a few learned scalars each and helped on the CPU track (README, "The CPU
# track"); value embeddings, untied heads and windows add parameters or attention rules, so they stay flags.
SKIPS = dict(x0_mix=True, value_residual=True, unet=True)
PRESETS = {
    # a CPU model: trains on 2 cores in minutes (train.py's DEVICE_DEFAULTS["cpu"] adds the CPU track's switches)
    "tiny": dict(n_layer=4, n_head=4, n_kv_head=2, n_embd=128, tie_embeddings=True),
    "small": dict(n_layer=7, n_head=8, n_kv_head=4, n_embd=512, **SKIPS),
    "medium": dict(n_layer=10, n_head=10, n_kv_head=5, n_embd=640, **SKIPS),
    "large": dict(n_layer=16, n_head=12, n_kv_head=6, n_embd=768, **SKIPS),
    # GPT-2 small's shape (12 x 768, tied), modern parts; with vocab 50304 it is 124M counted (class open)
    "gpt2-124m": dict(n_layer=12, n_head=12, n_kv_head=12, n_embd=768, tie_embeddings=True, **SKIPS),
}


def build_config(preset: str | None, vocab_size: int, block_size: int, **overrides) -> GPTConfig:
    """The one way to make a GPTConfig from settings (train.py, flops.py, leaderboard.py and the tests call
    it): the preset's fields (GPTConfig's defaults for None), then each override field by field, exactly
    as given (--n_head=16 sets the query heads only; the preset's n_kv_head stays). vocab_size is padded
    to a multiple of 64 (a no-op when already padded)."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(GPTConfig)} - {"vocab_size", "block_size"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model setting(s) {unknown}; the GPTConfig fields are {sorted(known)}")
    settings = {**(PRESETS[preset] if preset else {}), **overrides}
    return GPTConfig(vocab_size=padded_vocab_size(vocab_size), block_size=block_size, **settings)


def padded_vocab_size(n_vocab: int, multiple: int = 64) -> int:
    """Round the vocabulary up so the embedding and lm_head matmuls get tensor-core-friendly shapes
    (GPT-2's 50,257 -> 50,304, as nanoGPT does). The extra rows are never targets."""
    return -(-n_vocab // multiple) * multiple


# -----------------------------------------------------------------------------
# Building blocks


class Norm(nn.Module):
    """RMSNorm (or LayerNorm) over the last dimension, with a learnable gain. Plain PyTorch ops, so that
    torch.compile fuses the norm with the residual add and the casts around it (a custom kernel here
    would be an opaque node the compiler cannot fuse across; kernels.py's RMSNorm stays as a benchmark
    candidate, `python bench/kernels_speed.py`)."""

    def __init__(self, dim, config: GPTConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if config.bias and config.norm == "layernorm" else None

    def forward(self, x):
        # Output in x's dtype: CUDA autocast runs both norms in fp32 and returns fp32 (CPU autocast leaves
        # rms_norm alone), which would turn a bf16 residual stream, and q and k after QK-norm, into fp32.
        # With autocast off here the norm takes x as it is; its statistics are fp32 inside the kernel anyway.
        with _autocast_off(x):
            bias = self.bias.to(x.dtype) if self.bias is not None else None
            if self.config.norm == "layernorm":
                return F.layer_norm(x, (x.size(-1),), self.weight.to(x.dtype), bias, 1e-5)
            return F.rms_norm(x, (x.size(-1),), self.weight.to(x.dtype), 1e-6)  # one dtype: the fused kernel


def _autocast_off(x):
    """A context that turns autocast off for x's device while it is on; nothing otherwise (and on the meta
    device of parameter counting, which has no autocast)."""
    kind = x.device.type
    if kind != "meta" and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def rope_angles(positions, head_dim, base):
    """cos and sin of the rotary angles for integer positions (B or 1, T), shaped (B or 1, T, head_dim/2).
    Computed in float32 at every call (a few thousand numbers) rather than stored as buffers, so
    model.to(bfloat16) cannot round them."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    angles = positions.float()[..., None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs (first half, second half) of each head. x: (B, T, H, D); cos/sin: (B or 1, T, D/2)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d].float(), x[..., d:].float()
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1).type_as(x)


# -----------------------------------------------------------------------------
# Attention masks
#
# One rule everywhere (training, eval_bpb, generation): the query at position i sees the key at position j iff
#     j <= i                          causal
#     and i - j < window              the layer's window (long or short; full = every earlier key)
#     and doc(j) == doc(i)            with doc_mask: doc = how many delimiter tokens up to and including the
#                                     position, so a document's leading delimiter belongs to it
# The diagonal is always allowed, so no row is empty. Positions (RoPE) are not reset at document starts.
# What runs where:
#   - a CPU in bf16 (train.py's default on a CPU with native bf16), masked or not, while the scores fit in
#     EXPLICIT_ATTENTION_BYTES: explicit_attention, with the boolean mask below (None = causal);
#   - otherwise nothing masked (the default): SDPA with is_causal=True, the fast path, untouched;
#   - CUDA with torch.nn.attention.flex_attention on a GPU Triton compiles for (GPT.attention_impl "auto";
#     flex_runs_on): flex_attention, itself torch.compile'd, with a BlockMask built at each forward from the
#     document ids and the window (blocks outside every document and window are skipped: the window saves compute);
#   - CPU, MPS, no flex_attention (or a GPU below compute capability 7.0), or attention_impl "sdpa": SDPA with an
#     explicit boolean mask (B, 1, T, T) built from the same rule (attention_mask below; on CUDA with grouped
#     queries, k and v repeated to every head first); flex_attention on CPU runs only eagerly as a slow
#     reference here, so the tests use it to check that both paths agree;
#   - generation with the KV cache: SDPA with the same rule over the cached slots (plus left padding).
# The current windows live in a tensor (GPT.set_windows), not in Python ints, so growing them during
# training never recompiles a torch.compile'd model: the masks are data, not graph structure.

try:
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # PyTorch without FlexAttention: the SDPA path runs everywhere
    BlockMask = create_block_mask = flex_attention = None

# flex_attention is fast only compiled; on CUDA it is compiled once at import (lazily: nothing compiles
# until the first call). Inside an already compiled model, dynamo traces straight through it.
_FLEX_CUDA = torch.compile(flex_attention, dynamic=False) if flex_attention is not None and torch.cuda.is_available() else None


def triton_runs_on(device) -> bool:
    """Whether Triton compiles for this device (kernels.py's test, asked through model.py, the one file that
    imports kernels.py): torch.compile's GPU backend and flex_attention need it."""
    return triton_supports(device)


def flex_runs_on(device) -> bool:
    """Whether attention_impl "auto" takes flex_attention on this device: CUDA with FlexAttention in this PyTorch
    and a GPU Triton compiles for (compute capability >= 7.0); elsewhere dense boolean masks."""
    return flex_attention is not None and triton_supports(device)


def document_ids(idx, delimiter_id: int):
    """(B, T) document index of each token: the number of delimiter tokens up to and including it."""
    return (idx == delimiter_id).cumsum(-1)


def attention_mask(q_pos, k_pos, window, q_doc=None, k_doc=None):
    """The dense boolean form of the masking rule: True where the query at q_pos (T,) or (B, T) may see
    the key at k_pos (S,) or (B, S). window: an int or a 0-d tensor (>= the sequence length = full);
    q_doc/k_doc: document ids (B, T)/(B, S), or None without a document mask. Returns (B or 1, 1, T, S)."""
    rel = q_pos[..., :, None] - k_pos[..., None, :]
    mask = (rel >= 0) & (rel < window)
    if q_doc is not None:
        mask = mask & (q_doc[..., :, None] == k_doc[..., None, :])
    return mask[:, None] if mask.dim() == 3 else mask[None, None]


def flex_block_mask(docs, window, B: int, T: int, device):
    """The masking rule as a FlexAttention BlockMask for one (B, T) batch; docs None without a document
    mask (then one mask serves the whole batch)."""
    def mask_mod(b, h, q, k):
        ok = (q >= k) & (q - k < window)
        if docs is not None:
            ok = ok & (docs[b, q] == docs[b, k])
        return ok
    return create_block_mask(mask_mod, B if docs is not None else None, None, T, T, device=device)


# On a CPU in bf16, attention written out (q k^T, a float32 softmax, then v), which torch.compile fuses,
# beats SDPA's CPU flash kernel, whose bf16 backward is slower than its float32 one (README "Speed").
# It holds the (B, heads, T, S) scores in float32, so only while they take at most this many bytes.
EXPLICIT_ATTENTION_BYTES = 64 * 2 ** 20


def explicit_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d)) v with the scores materialised: mask None = causal (T == S, as SDPA's
    is_causal), else a boolean (B or 1, 1, T, S) mask. Key/value heads are repeated for grouped queries."""
    k, v = repeat_kv_heads(k, v, q.size(1))
    scores = q @ k.mT
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * q.size(-1) ** -0.5
    if mask is None:
        mask = torch.ones(q.size(2), k.size(2), dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype) @ v


def repeat_kv_heads(k, v, n_head: int):
    """Key/value heads (B, kv heads, S, D) repeated to n_head, each kv head serving its group of query heads
    (the grouping SDPA's enable_gqa uses)."""
    if k.size(1) == n_head:
        return k, v
    return k.repeat_interleave(n_head // k.size(1), dim=1), v.repeat_interleave(n_head // v.size(1), dim=1)


def _attend(q, k, v, mask, gqa: bool):
    """softmax(q k^T / sqrt(d)) v under `mask`: None = causal, a BlockMask (flex_attention) or a boolean
    tensor (SDPA). q, k, v: (B, heads, T or S, head_dim)."""
    block_mask = BlockMask is not None and isinstance(mask, BlockMask)
    if (q.device.type == "cpu" and q.dtype == torch.bfloat16 and not block_mask
            and 4 * q.size(0) * q.size(1) * q.size(2) * k.size(2) <= EXPLICIT_ATTENTION_BYTES):
        return explicit_attention(q, k, v, mask)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if block_mask:
        flex = _FLEX_CUDA if q.is_cuda and _FLEX_CUDA is not None else flex_attention
        return flex(q, k, v, block_mask=mask, enable_gqa=gqa)
    if gqa and q.is_cuda:
        # on CUDA only the flash and math kernels take enable_gqa, and flash takes no mask: with a mask, GQA
        # would fall to the math kernel (the whole B x H x T x S scores in memory). Repeated heads let the
        # memory-efficient kernel run instead, for copies of k and v (2 x B x H x S x D: 2 x head_dim / T of that)
        k, v = repeat_kv_heads(k, v, q.size(1))
        gqa = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        d, hd, b = config.n_embd, config.head_dim, config.bias
        self.c_q = nn.Linear(d, config.n_head * hd, bias=b)
        self.c_k = nn.Linear(d, config.n_kv_head * hd, bias=b)
        self.c_v = nn.Linear(d, config.n_kv_head * hd, bias=b)
        self.c_proj = nn.Linear(config.n_head * hd, d, bias=b)
        self.q_norm = Norm(hd, config) if config.qk_norm else None
        self.k_norm = Norm(hd, config) if config.qk_norm else None

    def forward(self, x, rope, ve=None, mask=None, cache=None, layer=0, v_first=None, v_lambda=None):
        """The attention output and this layer's values (B, T, kv heads, head_dim), which the first layer
        hands to the later ones for the value residual: v += v_lambda * (v_first - v)."""
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:  # value embeddings: token identity straight into the values (modded-nanogpt)
            v = v + ve.view_as(v).to(v.dtype)  # embeddings are not autocast: an fp32 ve would make v fp32 beside bf16 q, k
        if v_first is not None:  # value residual (modded-nanogpt record #9); written so v_lambda is used once
            v = v + v_lambda * (v_first - v)
        values = v
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = _attend(q, k, v, mask, self.n_kv_head != self.n_head)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1)), values


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        d, b = config.n_embd, config.bias
        self.c_fc = nn.Linear(d, config.d_ff, bias=b)
        self.c_gate = nn.Linear(d, config.d_ff, bias=b) if config.mlp == "swiglu" else None
        self.c_proj = nn.Linear(config.d_ff, d, bias=b)

    def forward(self, x):
        h = self.c_fc(x)
        if self.config.mlp == "swiglu":
            h = F.silu(self.c_gate(x)) * h
        elif self.config.mlp == "gelu":
            h = F.gelu(h, approximate="tanh")
        else:  # ReLU^2 (Primer; modded-nanogpt), left to the compiler to fuse with the matmul's epilogue
            h = F.relu(h).square()
        return self.c_proj(h)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1 = Norm(config.n_embd, config)
        self.attn = CausalSelfAttention(config)
        self.norm2 = Norm(config.n_embd, config)
        self.mlp = MLP(config)
        self.dropout = config.dropout

    def forward(self, x, rope, ve=None, mask=None, cache=None, layer=0, v_first=None, v_lambda=None):
        """(the block's output, its attention values)."""
        y, values = self.attn(self.norm1(x), rope, ve, mask, cache, layer, v_first, v_lambda)
        x = x + F.dropout(y, self.dropout, self.training)
        return x + F.dropout(self.mlp(self.norm2(x)), self.dropout, self.training), values


def bigram_ids(idx, prev, bigram_vocab: int, doc_start: int | None = None):
    """Row of the bigram table for each token of idx (B, T): a hash of (the previous token, the token) into
    rows 1..bigram_vocab-1; row 0 where there is no previous token. prev (B, T): each position's previous
    token, -1 for none; None = idx shifted right, none at position 0 (a training or eval window).
    doc_start: with a document mask, the delimiter that opens a document has no previous token either, so
    nothing crosses a document boundary."""
    if prev is None:
        prev = torch.cat([torch.full_like(idx[:, :1], -1), idx[:, :-1]], dim=1)
    if doc_start is not None:
        prev = torch.where(idx == doc_start, -1, prev)
    pair = prev * 1_000_003 + idx * 998_244_353  # two odd constants; token ids < 2^31 keep it in int64
    return torch.where(prev < 0, torch.zeros_like(idx), 1 + torch.remainder(pair, bigram_vocab - 1))


def value_embed_table(layer: int, n_layer: int, n_tables: int):
    """Which value-embedding table feeds `layer`: modded-nanogpt's pattern, table j feeds layer j and
    layer n_layer - n_tables + j (the same table twice, so count_params counts it twice)."""
    if layer < n_tables:
        return layer
    if layer >= n_layer - n_tables:
        return layer - (n_layer - n_tables)
    return None


# -----------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, use_kernels: bool = True):
        super().__init__()
        self.config = config
        d = config.n_embd
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(config.vocab_size, d), ln_f=Norm(d, config)))
        if not config.rope:
            self.transformer["wpe"] = nn.Embedding(config.block_size, d)
        # layer reuse: the list holds the same Block object several times; count_params sees it run each time
        unique = [Block(config) for _ in range(config.unique_layers)]
        self.blocks = nn.ModuleList([unique[i % len(unique)] for i in range(config.n_layer)])
        kv_dim = config.n_kv_head * config.head_dim
        self.value_embeds = nn.ModuleList([nn.Embedding(config.vocab_size, kv_dim) for _ in range(config.value_embeds)])
        if config.bigram_vocab:
            self.bigram_embed = nn.Embedding(config.bigram_vocab, d)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        # learned scalars of the skip connections, one per applied layer (so layer reuse does not share them);
        # 1-D, so train.py's optimizer puts them in its "scalar" group (AdamW)
        L = config.n_layer
        if config.x0_mix:  # record #9: x = resid_lambdas[i] * x + x0_lambdas[i] * x0 before block i
            self.resid_lambdas = nn.Parameter(torch.ones(L))
            self.x0_lambdas = nn.Parameter(torch.zeros(L))
        if config.value_residual:  # record #9: layers 1..L-1 mix the first layer's values in, 0.5 at init
            self.v_lambdas = nn.Parameter(torch.full((L - 1,), 0.5))
        if config.unet:  # record #11: encoder output i feeds decoder input L-1-i, weight 1 at init
            self.skip_weights = nn.Parameter(torch.ones(L // 2))
        # the current windows (long, short) in tokens, block_size = full: a tensor, so set_windows never
        # recompiles a compiled model; not saved (the config's windows are the model's)
        self.register_buffer("attn_windows", torch.tensor(self._config_windows(), dtype=torch.long), persistent=False)
        self.attention_impl = "auto"
        self.apply(self._init_weights)
        if config.zero_init:  # each block starts as the identity; an untied head starts at uniform logits
            for block in unique:
                nn.init.zeros_(block.attn.c_proj.weight)
                nn.init.zeros_(block.mlp.c_proj.weight)
            if not config.tie_embeddings:
                nn.init.zeros_(self.lm_head.weight)
            if config.bigram_vocab:  # the model starts as one without it
                nn.init.zeros_(self.bigram_embed.weight)
        self.use_kernels = use_kernels

    @property
    def use_kernels(self) -> bool:
        """kernels.py's fused LM head + loss (Triton on CUDA, its chunked reference elsewhere), which never
        materialises the (tokens, vocab) fp32 logits; False = F.cross_entropy on full logits. A runtime
        setting, not saved with the model."""
        return self._use_kernels

    @use_kernels.setter
    def use_kernels(self, on: bool):
        object.__setattr__(self, "_use_kernels", bool(on))

    def _config_windows(self):
        c = self.config
        long = c.window or c.block_size
        return [long, c.short_window or long]

    def set_windows(self, long: int | None = None, short: int | None = None) -> None:
        """Set the attention windows (tokens; 0 = full) of the long and short layers from now on, e.g. to grow
        them during training (record #13's window warm-up); None = the config's. Only for a config with a
        window or a document mask (the masked path is chosen at construction). Written in place into a
        tensor: a torch.compile'd model picks the new sizes up without recompiling, whatever the values."""
        if not self.config.attention_masked:
            raise ValueError("set_windows needs a config with window, short_window or doc_mask set; "
                             "the model runs plain causal attention")
        defaults = self._config_windows()
        values = [defaults[0] if long is None else long, defaults[1] if short is None else short]
        if min(values) < 0:
            raise ValueError(f"windows must be >= 0 (0 = full), got {values}")
        values = [v or self.config.block_size for v in values]
        with torch.no_grad():
            self.attn_windows.copy_(torch.tensor(values, dtype=torch.long))

    @property
    def windows(self) -> tuple[int, int]:
        """The current (long, short) windows, block_size meaning full (reads the tensor: a device sync)."""
        return tuple(int(w) for w in self.attn_windows.tolist())

    def attention_masks(self, idx):
        """What each kind of layer attends with for a batch idx (B, T): None (plain causal: nothing masked),
        or {"L": mask, "S": mask} (only "L" without short layers), each a FlexAttention BlockMask or a dense
        boolean (B or 1, 1, T, T) mask for SDPA; see "Attention masks" for which runs where.
        attention_impl: "auto" (flex on CUDA when available), "sdpa" or "flex" (forced, e.g. to compare)."""
        if not self.config.attention_masked:
            return None
        if self.attention_impl not in ("auto", "sdpa", "flex"):
            raise ValueError(f"attention_impl must be auto, sdpa or flex, got {self.attention_impl!r}")
        if self.attention_impl == "flex" and flex_attention is None:
            raise ValueError("attention_impl='flex' needs torch.nn.attention.flex_attention (PyTorch >= 2.5)")
        use_flex = self.attention_impl == "flex" or (self.attention_impl == "auto" and flex_runs_on(idx.device))
        B, T = idx.shape
        docs = document_ids(idx, self.config.delimiter_id) if self.config.doc_mask else None
        positions = torch.arange(T, device=idx.device)
        masks = {}
        for kind in set(self.config.layer_windows):
            window = self.attn_windows[0 if kind == "L" else 1]
            masks[kind] = (flex_block_mask(docs, window, B, T, idx.device) if use_flex
                           else attention_mask(positions, positions, window, docs, docs))
        return masks

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def rope(self, positions):
        """cos/sin for integer positions (T,) or (B, T), shaped (1 or B, T, head_dim/2)."""
        if not self.config.rope:
            return None
        positions = positions if positions.dim() == 2 else positions[None]
        return rope_angles(positions, self.config.head_dim, self.config.rope_base)

    def hidden_states(self, idx, positions=None, masks=None, cache=None, prev=None):
        """The final normalised hidden states (B, T, n_embd), before lm_head. masks: what attention_masks
        returns (built here from idx when None); generation passes its own, over the cached slots, and each
        token's previous token (prev, for the bigram embedding; see bigram_ids)."""
        B, T = idx.shape
        if positions is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
            positions = torch.arange(T, device=idx.device)
            masks = self.attention_masks(idx) if masks is None else masks
        x = self.transformer.wte(idx)
        if self.config.bigram_vocab:
            c = self.config
            x = x + self.bigram_embed(bigram_ids(idx, prev, c.bigram_vocab, c.delimiter_id if c.doc_mask else None))
        if not self.config.rope:
            x = x + self.transformer.wpe(positions)
        x = F.dropout(x, self.config.dropout, self.training)
        if x.device.type != "meta" and torch.is_autocast_enabled(x.device.type):  # (meta: parameter counting)
            # the residual stream in the autocast dtype (bf16 in training on CUDA and bf16 CPUs): half the traffic of
            # every add and norm; the weights, the learned scalars and the optimizer states stay fp32
            x = x.to(torch.get_autocast_dtype(x.device.type))
        x0 = x
        rope = self.rope(positions)
        c, L = self.config, len(self.blocks)
        kinds = c.layer_windows
        n_skip = L // 2 if c.unet else 0
        skips, v_first = [], None
        for i, block in enumerate(self.blocks):
            t = value_embed_table(i, L, len(self.value_embeds))
            ve = self.value_embeds[t](idx) if t is not None else None  # looked up per use, so reuse is visible
            if i >= L - n_skip:  # U-net: the decoder half takes the encoder half's outputs, last in first out
                x = x + self.skip_weights[i - (L - n_skip)] * skips.pop()
            if c.x0_mix:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            v_lambda = self.v_lambdas[i - 1] if c.value_residual and i > 0 else None
            x, values = block(x, rope, ve, masks[kinds[i]] if masks is not None else None, cache, i,
                              v_first if v_lambda is not None else None, v_lambda)
            if c.value_residual and i == 0:
                v_first = values
            if i < n_skip:
                skips.append(x)
        return self.transformer.ln_f(x)

    def logits(self, h):
        logits = self.lm_head(h).float()
        c = self.config.logit_softcap
        return c * torch.tanh(logits / c) if c > 0 else logits

    def forward(self, idx, targets=None, reduction="mean"):
        """targets None -> logits (B, T, V) float32. Otherwise the cross-entropy over targets != -1:
        reduction "mean" -> scalar, "sum" -> scalar, "none" -> float32 (B, T) nats, 0 where target == -1."""
        h = self.hidden_states(idx)
        if targets is None:
            return self.logits(h)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
        B, T, d = h.shape
        if self.use_kernels:
            # fused head + loss: the full (B*T, V) float32 logits are never materialised. Autocast does not
            # cast a custom op's inputs, so the residual stream (fp32) is cast here: the head runs in bf16.
            if torch.is_autocast_enabled(h.device.type):
                h = h.to(torch.get_autocast_dtype(h.device.type))
            loss = linear_cross_entropy(h.reshape(B * T, d), self.lm_head.weight, targets.reshape(B * T),
                                        softcap=self.config.logit_softcap, ignore_index=-1, reduction=reduction)
        else:
            loss = F.cross_entropy(self.logits(h).view(B * T, -1), targets.reshape(B * T),
                                   ignore_index=-1, reduction=reduction)
        return loss.float().view(B, T) if reduction == "none" else loss

    # -------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                 generator=None, valid_vocab=None, on_token=None):
        """Continue each prompt (a list of token ids; lengths may differ) by up to max_new_tokens.
        Returns only the new tokens of each prompt, without the stop token. Prompts are left-padded into
        one batch and decoded together with a KV cache. temperature 0 = greedy. valid_vocab (optional)
        forbids the padding rows of a padded vocabulary (ids >= valid_vocab). on_token(row, token), when
        given, is called for each new token as soon as it is chosen (streaming)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs at least one prompt, and every prompt at least one token")
        device = self.transformer.wte.weight.device
        B, P = len(prompts), max(len(p) for p in prompts)
        total = P + max_new_tokens
        if total > self.config.block_size:
            raise ValueError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds block_size "
                             f"{self.config.block_size}; shorten one of them")
        pad = torch.tensor([P - len(p) for p in prompts], device=device)
        idx = torch.zeros(B, P, dtype=torch.long, device=device)
        for b, p in enumerate(prompts):
            idx[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
        decoding = CachedDecoding(self, pad, total)
        out = [[] for _ in range(B)]
        done = [False] * B
        for _ in range(max_new_tokens):
            h = decoding.step(idx)
            logits = self.logits(h[:, -1])
            if valid_vocab is not None:
                logits[:, valid_vocab:] = -float("inf")
            nxt = sample_next_token(logits, temperature, top_k, top_p, generator)
            for b, token in enumerate(nxt.tolist()):  # one device sync per step, not one per row
                if done[b]:
                    continue
                if token == stop_token:
                    done[b] = True
                else:
                    out[b].append(token)
                    if on_token is not None:
                        on_token(b, token)
            if all(done):
                break
            idx = nxt[:, None]
        return out


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token per row of logits (B, V): greedy at temperature 0, else top-k, then nucleus (top-p) sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, -float("inf"))
        logits = torch.full_like(logits, -float("inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    if generator is not None and generator.device != probs.device:  # a CPU generator seeding GPU decoding
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class CachedDecoding:
    """KV-cache decoding of a batch of left-padded sequences (row b starts with pad[b] padding slots), in
    `total` slots: step(idx) feeds the next tokens (B, T) of every row and returns their final hidden states.
    They attend by the same rule as a forward over the whole sequence (attention_mask), over the cached
    slots; padding is no key (and not a delimiter), pads attend to themselves only. GPT.generate and the
    Hugging Face wrapper (hf_model.py) both decode with it."""

    def __init__(self, model: "GPT", pad, total: int):
        c = model.config
        self.model, self.total, self.pos = model, total, 0
        device = pad.device
        self.slot = torch.arange(total, device=device)
        self.positions = (self.slot[None, :] - pad[:, None]).clamp(min=0)  # real tokens start at position 0
        self.key_is_real = self.slot[None, :] >= pad[:, None]              # (B, total)
        self.cache = KVCache(c, pad.numel(), total)
        self.tokens = torch.zeros(pad.numel(), total, dtype=torch.long, device=device)  # every token fed so far
        self.windows = {kind: model.attn_windows[0 if kind == "L" else 1] for kind in set(c.layer_windows)}

    def step(self, idx):
        c, pos, T = self.model.config, self.pos, idx.size(1)
        if pos + T > self.total:
            raise ValueError(f"{pos + T} tokens do not fit in the {self.total} slots of this decoding (the model's "
                             f"block_size is {c.block_size}); generate fewer tokens")
        self.tokens[:, pos:pos + T] = idx
        slot, key_is_real, tokens = self.slot, self.key_is_real, self.tokens
        q_slots, k_slots = slot[pos:pos + T], slot[:pos + T]
        docs = ((tokens[:, :pos + T] == c.delimiter_id) & key_is_real[:, :pos + T]).cumsum(-1) if c.doc_mask else None
        real = key_is_real[:, None, None, :pos + T]
        diagonal = (k_slots[None, :] == q_slots[:, None])[None, None]
        masks = {kind: (attention_mask(q_slots, k_slots, window, docs[:, pos:] if docs is not None else None, docs)
                        & real) | diagonal for kind, window in self.windows.items()}
        # each token's previous token, none for a sequence's first (or after padding), as in training
        seen = torch.where(key_is_real[:, :pos + T], tokens[:, :pos + T], -1)
        prev = torch.cat([torch.full_like(seen[:, :1], -1), seen[:, :-1]], dim=1)[:, pos:]
        self.pos += T
        return self.model.hidden_states(idx, self.positions[:, pos:pos + T], masks, self.cache, prev)


class KVCache:
    """Keys and values of every applied layer (a reused block gets one slot per application)."""

    def __init__(self, config: GPTConfig, batch, length):
        self.shape = (config.n_layer, batch, config.n_kv_head, length, config.head_dim)
        self.k = self.v = None
        self.length = [0] * config.n_layer

    def update(self, layer, k, v):
        if self.k is None:  # allocated at first use, in the dtype the keys come in (bf16 under autocast)
            self.k = torch.zeros(self.shape, device=k.device, dtype=k.dtype)
            self.v = torch.zeros(self.shape, device=v.device, dtype=v.dtype)
        start, end = self.length[layer], self.length[layer] + k.size(2)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        self.length[layer] = end
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


# -----------------------------------------------------------------------------
# Checkpoints


def cuda_has_native_bf16(device) -> bool:
    """Whether this GPU multiplies bf16 in hardware: compute capability >= 8.0 (Ampere on), or any ROCm GPU.
    Older ones (T4, V100, RTX 20xx) emulate it far below their fp32 rate, and older torch refuses it in autocast."""
    return torch.version.hip is not None or torch.cuda.get_device_capability(device)[0] >= 8


def _strip_prefixes(state_dict):
    """Remove torch.compile's `_orig_mod.` and DDP's `module.` prefixes so any wrapper's weights load."""
    clean = {}
    for key, value in state_dict.items():
        while key.startswith(("_orig_mod.", "module.")):
            key = key.split(".", 1)[1]
        clean[key] = value
    return clean


def save_checkpoint(path, model, config, tokenizer: dict, step: int, **extra) -> None:
    """torch.save {model, config, tokenizer, step, **extra}, atomically (common.atomic_file), so a crash
    leaves the old checkpoint or the new one, never half of one."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = dict(model=_strip_prefixes(model.state_dict()),
                      config=config if isinstance(config, dict) else asdict(config),
                      tokenizer=tokenizer, step=int(step), **extra)
    common = project_module("common")  # the one atomic writer (an export folder carries no common.py)
    try:
        with common.atomic_file(path) as f:
            torch.save(checkpoint, f)
    except RuntimeError as e:
        # torch.save reports a failed write of the file (a full disk) as "inline_container.cc ... unexpected
        # pos"; the OSError the file raised is its context: raise that, naming the checkpoint
        cause = e.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None


# What torch.load(weights_only=True) says it refused, in the wordings of PyTorch 2.4 to 2.13; the advice
# around it (re-run with weights_only=False, allow-list the global) is never repeated: it would run the code.
# ("Unsupported operand N" is a byte that is no pickle opcode: a file that is not a checkpoint, said as corrupt.)
REFUSED_GLOBAL = re.compile(r"(Trying to load unsupported GLOBAL [^\n]*?|Unsupported global: [^\n]*?)(?:\.\s|\.?$)", re.M)


def unsafe_content(message: str) -> str | None:
    """What a failed weights-only load refused (the global it names), or None for another failure."""
    if "Weights only load failed" not in message or "Unsupported operand" in message:
        return None
    found = REFUSED_GLOBAL.search(message)
    return found.group(1) if found else "an object that is not a tensor or a plain container"


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True (no arbitrary code runs); ValueError when it is missing,
    corrupt or lacks the required keys."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} does not exist; pass the path of a .pt file written by train.py")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle of a forbidden type, not a torch file at all
        refused = unsafe_content(str(e))
        if refused:
            raise ValueError(f"checkpoint {path} holds objects that a weights-only load refuses ({refused}); "
                             f"train.py never writes those, and loading such a file in full can run code it "
                             f"carries: do not load it, use a checkpoint train.py wrote") from None
        reason = (str(e).strip().splitlines() or ["empty file" if os.path.getsize(path) == 0 else "no detail"])[0]
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {reason[:200]}); "
                              "it is corrupt or not a torch.save file from train.py") from None
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise ValueError(f"checkpoint {path} has no 'model' and 'config' entries; it was not written by "
                              "model.save_checkpoint")
    ckpt["model"] = _strip_prefixes(ckpt["model"])
    return ckpt


def model_from_checkpoint(ckpt: dict, device="cpu") -> GPT:
    """Rebuild the GPT a checkpoint describes and load its weights; ValueError on any mismatch."""
    try:
        config = config_from_dict(dict(ckpt["config"]))
    except (ValueError, TypeError) as e:
        raise ValueError(f"checkpoint config does not fit this model.py: {e}") from None
    with torch.device("meta"):  # shapes first: a config edited to block_size 10^9 (learned positions) allocates nothing
        expected = GPT(config).state_dict()
    state = _strip_prefixes(ckpt["model"])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(s for s in (f"missing {missing[:5]}" if missing else "",
                                       f"unexpected {unexpected[:5]}" if unexpected else "",
                                       f"shape mismatch {wrong[:5]}" if wrong else "") if s)
        raise ValueError(f"checkpoint weights do not fit its config ({detail}); was the checkpoint "
                              "written by a different model.py?")
    with torch.device(device):
        model = GPT(config)
    model.load_state_dict(state)
    return model


# -----------------------------------------------------------------------------
# Command line: `sample` writes stories from a checkpoint; `export` hands it to export.py (imported only
# there: export.py imports this file, and needs transformers, safetensors or gguf, which sampling does not).


def project_module(name: str):
    """A repository file the command line needs (common.py, prepare.py, judge.py, export.py), imported by name when a
    command runs. Not an import statement: a Hugging Face export folder carries model.py without those
    files, and transformers refuses to load remote code whose import statements name a missing module."""
    return importlib.import_module(name)


def read_prompts(path) -> list[str]:
    """--prompts FILE: a .txt file holds one prompt per line; .yaml, .csv and .jsonl are read as judge.py
    reads its prompt files (a YAML list, a `prompt` column or field). Blank prompts are skipped."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"--prompts={path}: file not found; give a .txt file with one prompt per line")
    if path.suffix.lower() == ".txt":
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        prompts = project_module("judge").load_prompt_file(path)  # its prompt formats, in one place
    if not prompts:
        raise ValueError(f"--prompts={path}: no prompts in it")
    return prompts


class TokenPrinter:
    """Prints tokens as they come: their bytes through an incremental UTF-8 decoder, so a character split
    over two tokens is printed whole once its second token arrives."""

    def __init__(self, enc, out):
        self.enc, self.out = enc, out
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, row, token):
        self.out.write(self.decoder.decode(self.enc.decode_single_token_bytes(token)))
        self.out.flush()

    def finish(self):
        self.out.write(self.decoder.decode(b"", final=True) + "\n")
        self.out.flush()


def sample(args, out=None) -> list[list[int]]:
    """`python model.py sample`: --n completions of each prompt, one after the other, each streamed to
    `out` as it is generated, after the prompt. Each prompt is preceded by the document delimiter, as every
    training document is, and a completion ends at the next delimiter (or after --max_new_tokens, capped to
    what fits in the model's block_size). Returns the completions' tokens."""
    prepare = project_module("prepare")  # the tokenizer spec a checkpoint carries
    out = out or sys.stdout
    device = project_module("common").resolve_device(args.device)
    ckpt = load_checkpoint(args.ckpt, map_location=device)
    model = model_from_checkpoint(ckpt, device=device)
    model.eval()
    try:
        enc = prepare.encoding_from_spec(ckpt.get("tokenizer") or {})
        delimiter = prepare.delimiter_id(enc)
    except ValueError as e:
        raise ValueError(f"--ckpt={args.ckpt}: its tokenizer: {e}") from None
    prompts = read_prompts(args.prompts) if args.prompts else [args.prompt]
    contexts = [[delimiter] + enc.encode_ordinary(p) for p in prompts]
    block_size = model.config.block_size
    longest = max(len(c) for c in contexts)
    if longest >= block_size:
        raise ValueError(f"the longest prompt is {longest} tokens with the delimiter, not shorter than the "
                         f"model's block_size {block_size}; use a shorter prompt")
    generator = torch.Generator(device=device).manual_seed(args.seed)
    completions = []
    for i, (prompt, context) in enumerate(zip(prompts, contexts)):
        room = block_size - len(context)
        max_new = room if args.max_new_tokens is None else min(args.max_new_tokens, room)
        if args.max_new_tokens is not None and args.max_new_tokens > room:
            print(f"note: --max_new_tokens={args.max_new_tokens} capped to {room} for prompt {i + 1}, so it fits "
                  f"in the model's block_size {block_size}", file=sys.stderr)
        for j in range(args.n):
            out.write(f"--- prompt {i + 1}/{len(prompts)}, sample {j + 1}/{args.n} ---\n{prompt}")
            printer = TokenPrinter(enc, out)
            tokens = model.generate([context], max_new, temperature=args.temperature, top_k=args.top_k,
                                    top_p=args.top_p, stop_token=delimiter, generator=generator,
                                    valid_vocab=enc.n_vocab, on_token=printer)[0]
            printer.finish()
            completions.append(tokens)
    return completions


def make_parser():
    common = project_module("common")  # the repository's option parser and number parsers
    count, number = common.parse_count, common.parse_finite
    p = common.ArgumentParser(prog="model.py", description="Write stories from a checkpoint (sample) or export it "
                               "for Hugging Face transformers and llama.cpp (export).")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="completions of a prompt, printed as they are generated")
    s.add_argument("--ckpt", required=True, help="a checkpoint written by train.py (step_NNNNNN.pt)")
    prompt = s.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help="the beginning of the story (default: none, a story from scratch)")
    prompt.add_argument("--prompts", metavar="FILE", help="a .txt file with one prompt per line (or judge.py's "
                        ".yaml/.csv/.jsonl prompt files)")
    s.add_argument("--n", type=count, default=1, help="completions per prompt")
    s.add_argument("--max_new_tokens", type=count, default=None, help="length cap, in tokens (default: as many "
                   "as fit in the model's block_size)")
    s.add_argument("--temperature", type=number, default=0.8, help="sampling temperature (0 = greedy)")
    s.add_argument("--top_k", type=count, default=None, help="sample from the k most likely tokens only")
    s.add_argument("--top_p", type=number, default=None, help="nucleus sampling: the smallest set of tokens "
                   "whose probability reaches top_p")
    s.add_argument("--seed", type=count, default=1337)
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ...")
    e = sub.add_parser("export", help="a Hugging Face folder (or a GGUF file) from a checkpoint; see export.py")
    e.add_argument("--ckpt", required=True, help="a checkpoint written by train.py (step_NNNNNN.pt)")
    e.add_argument("--out", required=True, help="the folder to write (created; must be empty if it exists)")
    e.add_argument("--format", choices=("hf", "gguf"), default="hf", help="hf: a transformers folder (a standard "
                   "LlamaForCausalLM where the config is a plain Llama, else the project's model.py as remote code); "
                   "gguf: OUT/model.gguf for llama.cpp and Ollama (plain-Llama configs only)")
    e.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="the weights' dtype in the exported files")
    e.add_argument("--push_to_hub", metavar="REPO", default=None, help="upload the folder to the Hugging Face hub "
                   "repo OWNER/NAME (created if missing; log in first with `hf auth login`)")
    e.add_argument("--private", action="store_true", help="with --push_to_hub: create the repo private")
    return p


def check_sample_args(args) -> None:
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top_k must be at least 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top_p must be in (0, 1], got {args.top_p}")


def run(argv) -> int:
    args = make_parser().parse_args(argv)
    if args.command == "sample":
        check_sample_args(args)
        sample(args)
    else:
        project_module("export").export(args)  # imports this file; needs transformers, safetensors or gguf
    return 0


def main(argv=None) -> int:
    return project_module("common").run_main("model.py", run, argv)


if __name__ == "__main__":
    sys.exit(main())
