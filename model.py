"""
The GPT model: a small modern decoder-only transformer, the hackathon's parameter counting,
weight classes, batched KV-cache generation and checkpoints.

    from model import GPT, GPTConfig, count_params, preset_config
    model = GPT(preset_config("small", vocab_size=8192, block_size=1024))
    loss = model(idx, targets)                          # mean cross-entropy, targets == -1 ignored
    nats = model(idx, targets, reduction="none")        # float32 (B, T) per-token losses, for BPB
    print(count_params(model))                          # {"counted", "unique", "embedding", "non_embedding"}

`python model.py --preset=small --vocab_size=8192` prints a configuration and its parameter count.

Every modern part is a switch in GPTConfig: RoPE, RMSNorm (or LayerNorm), QK-norm, grouped-query
attention, ReLU^2 / GELU / SwiGLU MLP, no biases, zero-initialised output projections, logit
soft-capping, tied or untied embeddings, layer reuse and value embeddings (modded-nanogpt style).
The file knows nothing about data files or distributed training.
"""
import difflib
import os
import sys
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # kernels.py ships with the repo; the fallback only keeps model.py importable on its own
    import kernels
except ImportError:  # pragma: no cover - exercised only in a bare copy of model.py
    kernels = None

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
    use_kernels: bool = True     # kernels.py ops (Triton on CUDA, PyTorch reference elsewhere)
    bias: bool = False           # biases in every linear layer and norm (GPT-2 style); off in modern models
    zero_init: bool = True       # zero-initialise output projections (attention, MLP, untied lm_head)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def d_ff(self) -> int:
        return round(self.mlp_ratio * self.n_embd)

    @property
    def unique_layers(self) -> int:
        return self.n_unique_layers or self.n_layer

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
        if not 0 <= self.value_embeds <= self.n_layer:
            problems.append(f"value_embeds must be between 0 and n_layer ({self.n_layer})")
        if self.logit_softcap < 0:
            problems.append("logit_softcap must be >= 0 (0 disables it)")
        if self.d_ff < 1:
            problems.append(f"mlp_ratio ({self.mlp_ratio}) must give d_ff = round(mlp_ratio * n_embd) >= 1")
        if self.rope and not self.rope_base > 0:
            problems.append(f"rope_base must be > 0, got {self.rope_base}")
        if problems:
            raise ValueError("GPTConfig: " + "; ".join(problems))


def config_from_dict(d: dict) -> GPTConfig:
    """The GPTConfig a checkpoint or record stored with asdict(); unknown keys are an error, not ignored."""
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown GPTConfig field(s) {unknown}; known: {sorted(known)}")
    return GPTConfig(**d)


def padded_vocab_size(n_vocab: int, multiple: int = 64) -> int:
    """Round the vocabulary up so the embedding and lm_head matmuls get tensor-core-friendly shapes
    (GPT-2's 50,257 -> 50,304, as nanoGPT does). The extra rows are never targets."""
    return -(-n_vocab // multiple) * multiple


# -----------------------------------------------------------------------------
# Building blocks


def _rms_norm(x, weight, eps=1e-6, use_kernels=True):
    if use_kernels and kernels is not None:
        return kernels.rms_norm(x, weight, eps)
    return F.rms_norm(x, (x.size(-1),), weight, eps)


class Norm(nn.Module):
    """RMSNorm (or LayerNorm) over the last dimension, with a learnable gain."""

    def __init__(self, dim, config: GPTConfig):
        super().__init__()
        self.config = config  # shared with GPT: flipping config.use_kernels flips every module
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if config.bias and config.norm == "layernorm" else None

    def forward(self, x):
        if self.config.norm == "layernorm":
            return F.layer_norm(x, (x.size(-1),), self.weight, self.bias, 1e-5)
        return _rms_norm(x, self.weight, 1e-6, self.config.use_kernels)


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

    def forward(self, x, rope, ve=None, attn_mask=None, cache=None, layer=0):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:  # value embeddings: token identity straight into the values (modded-nanogpt)
            v = v + ve.view_as(v)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        gqa = self.n_kv_head != self.n_head
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


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
        elif self.config.use_kernels and kernels is not None:
            h = kernels.relu2(h)
        else:
            h = F.relu(h).square()
        return self.c_proj(h)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1 = Norm(config.n_embd, config)
        self.attn = CausalSelfAttention(config)
        self.norm2 = Norm(config.n_embd, config)
        self.mlp = MLP(config)

    def forward(self, x, rope, ve=None, attn_mask=None, cache=None, layer=0):
        x = x + self.attn(self.norm1(x), rope, ve, attn_mask, cache, layer)
        return x + self.mlp(self.norm2(x))


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
    def __init__(self, config: GPTConfig):
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
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        if config.zero_init:  # each block starts as the identity; an untied head starts at uniform logits
            for block in unique:
                nn.init.zeros_(block.attn.c_proj.weight)
                nn.init.zeros_(block.mlp.c_proj.weight)
            if not config.tie_embeddings:
                nn.init.zeros_(self.lm_head.weight)

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

    def hidden_states(self, idx, positions=None, attn_mask=None, cache=None):
        """The final normalised hidden states (B, T, n_embd), before lm_head."""
        B, T = idx.shape
        if positions is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
            positions = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx)
        if not self.config.rope:
            x = x + self.transformer.wpe(positions)
        rope = self.rope(positions)
        n_ve = len(self.value_embeds)
        for i, block in enumerate(self.blocks):
            t = value_embed_table(i, len(self.blocks), n_ve)
            ve = self.value_embeds[t](idx) if t is not None else None  # looked up per use, so reuse is visible
            x = block(x, rope, ve, attn_mask, cache, i)
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
        if self.config.use_kernels and kernels is not None:
            # fused head + loss: the full (B*T, V) float32 logits are never materialised. Autocast does not
            # cast a custom op's inputs, so the residual stream (fp32) is cast here: the head runs in bf16.
            if torch.is_autocast_enabled(h.device.type):
                h = h.to(torch.get_autocast_dtype(h.device.type))
            loss = kernels.linear_cross_entropy(h.reshape(B * T, d), self.lm_head.weight, targets.reshape(B * T),
                                                softcap=self.config.logit_softcap, ignore_index=-1,
                                                reduction=reduction)
        else:
            loss = F.cross_entropy(self.logits(h).view(B * T, -1), targets.reshape(B * T),
                                   ignore_index=-1, reduction=reduction)
        return loss.float().view(B, T) if reduction == "none" else loss

    # -------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                 generator=None, valid_vocab=None):
        """Continue each prompt (a list of token ids; lengths may differ) by up to max_new_tokens.
        Returns only the new tokens of each prompt, without the stop token. Prompts are left-padded into
        one batch and decoded together with a KV cache. temperature 0 = greedy. valid_vocab (optional)
        forbids the padding rows of a padded vocabulary (ids >= valid_vocab)."""
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
        slot = torch.arange(total, device=device)
        positions = (slot[None, :] - pad[:, None]).clamp(min=0)       # real tokens start at position 0
        key_is_real = slot[None, :] >= pad[:, None]                    # (B, total)
        cache = KVCache(self.config, B, total)

        out = [[] for _ in range(B)]
        done = [False] * B
        pos = 0
        for _ in range(max_new_tokens):
            T = idx.size(1)
            q_slots = slot[pos:pos + T]
            causal = slot[None, :pos + T] <= q_slots[:, None]                        # (T, keys)
            mask = causal[None] & key_is_real[:, None, :pos + T]                     # (B, T, keys)
            mask = mask | (slot[None, None, :pos + T] == q_slots[None, :, None])     # pads attend to themselves
            h = self.hidden_states(idx, positions[:, pos:pos + T], mask[:, None], cache)
            logits = self.logits(h[:, -1])
            if valid_vocab is not None:
                logits[:, valid_vocab:] = -float("inf")
            nxt = sample_next_token(logits, temperature, top_k, top_p, generator)
            pos += T
            for b, token in enumerate(nxt.tolist()):  # one device sync per step, not one per row
                if done[b]:
                    continue
                if token == stop_token:
                    done[b] = True
                else:
                    out[b].append(token)
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
# Parameter counting (TinyStories Hackathon rules), detected from the autograd graph of a real forward

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
        root = (out if out.dim() == 0 else out.float().sum()).grad_fn
        consumers = _autograd_consumers(root) if root is not None else {}
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
    del consumers, out, root
    return {"counted": counted, "unique": unique, "embedding": embedding, "non_embedding": counted - embedding}


WEIGHT_CLASSES = (("small", 30_000_000), ("medium", 60_000_000), ("large", 120_000_000))


def weight_class(counted: int) -> str:
    """TinyStories Hackathon weight class: small <= 30M < medium <= 60M < large <= 120M < open."""
    for name, limit in WEIGHT_CLASSES:
        if counted <= limit:
            return name
    return "open"


# -----------------------------------------------------------------------------
# Presets. The weight-class presets sit just under their limits for the TinyStories default tokenizer
# (bpe:8192, untied embeddings); `python flops.py` prints their exact counts.

PRESETS = {
    # a CPU model: trains on 2 cores in minutes
    "tiny": dict(n_layer=4, n_head=4, n_kv_head=2, n_embd=128, tie_embeddings=True),
    "small": dict(n_layer=7, n_head=8, n_kv_head=4, n_embd=512),
    "medium": dict(n_layer=10, n_head=10, n_kv_head=5, n_embd=640),
    "large": dict(n_layer=16, n_head=12, n_kv_head=6, n_embd=768),
    # GPT-2 small's shape (12 x 768, tied), modern parts; with vocab 50304 it is 124M counted (class open)
    "gpt2-124m": dict(n_layer=12, n_head=12, n_kv_head=12, n_embd=768, tie_embeddings=True),
}


def preset_config(name: str, vocab_size: int, block_size: int) -> GPTConfig:
    """The GPTConfig of a preset; vocab_size is padded to a multiple of 64 (a no-op when already padded)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return GPTConfig(vocab_size=padded_vocab_size(vocab_size), block_size=block_size, **PRESETS[name])


# -----------------------------------------------------------------------------
# Checkpoints


def resolve_device(name: str | None = None) -> torch.device:
    """The device to run a model on: `name` (cpu, cuda, cuda:N, mps), or the best available one for None or
    "auto". ValueError with the fix when it is not a device name or this machine does not have it."""
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


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit its model; the message says which file and why."""


def _strip_prefixes(state_dict):
    """Remove torch.compile's `_orig_mod.` and DDP's `module.` prefixes so any wrapper's weights load."""
    clean = {}
    for key, value in state_dict.items():
        while key.startswith(("_orig_mod.", "module.")):
            key = key.split(".", 1)[1]
        clean[key] = value
    return clean


def save_checkpoint(path, model, config, tokenizer: dict, step: int, **extra) -> None:
    """torch.save {model, config, tokenizer, step, **extra}, atomically: a temp file in the same folder is
    renamed over `path`, so a crash leaves the old checkpoint or the new one, never half of one."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    checkpoint = dict(model=_strip_prefixes(model.state_dict()),
                      config=config if isinstance(config, dict) else asdict(config),
                      tokenizer=tokenizer, step=int(step), **extra)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so a power cut cannot leave an empty file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True (no arbitrary code runs); CheckpointError when it is missing,
    corrupt or lacks the required keys."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .pt file written by train.py")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle of a forbidden type, not a torch file at all
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "it is corrupt or not a torch.save file from train.py") from None
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise CheckpointError(f"checkpoint {path} has no 'model' and 'config' entries; it was not written by "
                              "model.save_checkpoint")
    ckpt["model"] = _strip_prefixes(ckpt["model"])
    return ckpt


def model_from_checkpoint(ckpt: dict, device="cpu") -> GPT:
    """Rebuild the GPT a checkpoint describes and load its weights; CheckpointError on any mismatch."""
    try:
        config = config_from_dict(dict(ckpt["config"]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint config does not fit this model.py: {e}") from None
    with torch.device(device):
        model = GPT(config)
    state = _strip_prefixes(ckpt["model"])
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(s for s in (f"missing {missing[:5]}" if missing else "",
                                       f"unexpected {unexpected[:5]}" if unexpected else "",
                                       f"shape mismatch {wrong[:5]}" if wrong else "") if s)
        raise CheckpointError(f"checkpoint weights do not fit its config ({detail}); was the checkpoint "
                              "written by a different model.py?")
    model.load_state_dict(state)
    return model


# -----------------------------------------------------------------------------
# Command line: print a configuration and its parameter count


def config_field_types() -> dict:
    """GPTConfig field -> its type (int, float, bool, str), for typing --key=value overrides."""
    names = {"int": int, "float": float, "bool": bool, "str": str}
    return {f.name: names.get(f.type, f.type) if isinstance(f.type, str) else f.type for f in fields(GPTConfig)}


def parse_overrides(argv, config_fields):
    """--key=value pairs, typed by the field they set; a SystemExit-free ValueError on bad input."""
    out = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"argument {arg!r} is not of the form --key=value")
        key, value = arg[2:].split("=", 1)
        if key not in config_fields:
            close = difflib.get_close_matches(key, config_fields, n=1)
            raise ValueError(f"unknown setting --{key}; " + (f"did you mean --{close[0]}?" if close else
                                                              f"known: {', '.join(sorted(config_fields))}"))
        kind = config_fields[key]
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                out[key] = value.lower() in ("true", "1")
            elif kind is int:  # "1e9" is accepted when it is a whole number
                try:
                    out[key] = int(value)
                except ValueError:
                    if not float(value).is_integer():
                        raise
                    out[key] = int(float(value))
            elif kind is float:
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            raise ValueError(f"--{key}={value}: expected {'an' if kind is int else 'a'} {kind.__name__}") from None
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("settings: --preset=NAME (" + ", ".join(PRESETS) + "), --vocab_size, --block_size, and any GPTConfig field")
        return 0
    types = config_field_types()
    try:
        opts = parse_overrides(argv, {**types, "preset": str})
        preset = opts.pop("preset", None)
        if preset is not None:
            base = asdict(preset_config(preset, opts.pop("vocab_size", 8192), opts.pop("block_size", 1024)))
            config = GPTConfig(**{**base, **opts})
        else:
            config = GPTConfig(**opts)
    except ValueError as e:
        print(f"error: model.py: {e}", file=sys.stderr)
        return 2
    with torch.device("meta"):
        model = GPT(config)
    counts = count_params(model)
    print(config)
    for key, value in counts.items():
        print(f"{key:>14}: {value:,}")
    print(f"{'weight class':>14}: {weight_class(counts['counted'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
