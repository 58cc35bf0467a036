"""
Fused Triton kernels for the hot non-matmul paths of training, each beside a plain PyTorch reference.

    rms_norm(x, weight, eps)                      RMSNorm, forward and backward fused, fp32 statistics
    relu2(x)                                      relu(x)**2; backward from the pre-activation alone
    linear_cross_entropy(x, weight, targets, ...) LM head + logit soft-cap + cross-entropy, in chunks of
                                                  tokens, so the (tokens, vocab) fp32 logits never exist

model.py uses linear_cross_entropy (GPT.use_kernels). RMSNorm and ReLU^2 are left to torch.compile in the
model, which fuses them with the residual adds and casts; their kernels stay here as candidates that
bench/kernels_speed.py times against the compiled reference, to be put back on the model's path only where a GPU
measurement shows them faster. The public functions pick the Triton path when the tensor is on CUDA and
Triton imports; on a CPU inside a compiled model, linear_cross_entropy runs the same chunked op with each
cache-sized chunk computed by compiled PyTorch (cross_entropy_chunk_torch); everywhere else (eager CPU,
MPS, no Triton) the reference, so nothing here is required. The references are the test oracles:
tests/test_kernels.py runs every Triton kernel on CPU under TRITON_INTERPRET=1 and compares forward and
gradients with them. Each Triton op is a torch.library custom op with its own
autograd formula, so it composes with torch.compile (the compiler sees one opaque op). The file imports no
other project file: model.py is the only one that imports it.

    python bench/kernels_speed.py   # each kernel vs its torch.compile'd reference (needs CUDA)
"""

import torch
import torch.nn.functional as F

try:  # Triton is optional: without it (or without a GPU) every op uses its reference
    import triton
    import triton.language as tl
    HAS_TRITON = True
except Exception:  # ImportError, or a broken install that fails at import time
    triton = None
    tl = None
    HAS_TRITON = False


# -----------------------------------------------------------------------------
# PyTorch references: the definitions. Used on CPU/MPS and as the test oracles.

def rms_norm_reference(x, weight=None, eps: float = 1e-6):
    """y = x / sqrt(mean(x^2) + eps) * weight, statistics in fp32, output in x's dtype."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


def relu2_reference(x):
    """The ReLU-squared MLP activation (Primer; modded-nanogpt): relu(x)^2."""
    return F.relu(x).square()


def softcap_logits(logits, softcap: float):
    """Bound logits smoothly to (-softcap, softcap) (Gemma 2; modded-nanogpt). 0 disables it."""
    if softcap > 0:
        return softcap * torch.tanh(logits / softcap)
    return logits


def linear_cross_entropy_reference(x, weight, targets, softcap: float = 0.0, ignore_index: int = -1,
                                   reduction: str = "mean"):
    """Cross-entropy of softcap(x @ weight.T) against targets, computed on the full logits in fp32.

    x: (..., D), weight: (V, D), targets: (...) int. "mean" -> scalar mean over targets != ignore_index
    (nan when every target is ignored, like F.cross_entropy); "sum" -> their scalar sum; "none" -> fp32
    per-token losses shaped like targets, 0 where the target is ignored.
    """
    _check_reduction(reduction)
    logits = F.linear(x, weight.to(x.dtype)).float()
    logits = softcap_logits(logits, softcap)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=ignore_index, reduction=reduction)
    return loss.view(targets.shape) if reduction == "none" else loss


def _check_reduction(reduction: str):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"linear_cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


# -----------------------------------------------------------------------------
# Public functions: Triton on CUDA when available, the reference everywhere else.

def triton_supports(device) -> bool:
    """Whether Triton (and so torch.compile's GPU code and flex_attention) runs on this CUDA device: any ROCm
    GPU, or an NVIDIA one of compute capability >= 7.0 (the limit torch._dynamo's device_interface checks;
    Pascal cards such as the GTX 10xx fall below it)."""
    device = torch.device(device)
    if not (HAS_TRITON and device.type == "cuda"):
        return False
    # get_device_properties, which torch.compile folds to a constant inside a compiled model
    return torch.version.hip is not None or torch.cuda.get_device_properties(device).major >= 7


def _use_triton(x) -> bool:
    return x.is_cuda and triton_supports(x.device)


def rms_norm(x, weight=None, eps: float = 1e-6):
    """RMSNorm over the last dimension; see rms_norm_reference."""
    if _use_triton(x):
        return rms_norm_triton(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def relu2(x):
    """relu(x)^2; see relu2_reference."""
    if _use_triton(x):
        return relu2_triton(x)
    return relu2_reference(x)


def linear_cross_entropy(x, weight, targets, softcap: float = 0.0, ignore_index: int = -1,
                         reduction: str = "mean"):
    """LM head + soft-cap + cross-entropy; see linear_cross_entropy_reference for the definition. On CUDA
    the Triton chunks; on a CPU inside a torch.compile'd model the same chunked op with compiled PyTorch
    chunks (each chunk's logits stay in cache: 1.6x faster than the compiled full-logits reference at
    2,048 tokens x 4,096 vocabulary); elsewhere, and in an eager model, the reference."""
    if _use_triton(x):
        return linear_cross_entropy_triton(x, weight, targets, softcap, ignore_index, reduction)
    if x.device.type == "cpu" and torch.compiler.is_compiling():
        return linear_cross_entropy_chunked(x, weight, targets, softcap, ignore_index, reduction, chunk="torch")
    return linear_cross_entropy_reference(x, weight, targets, softcap, ignore_index, reduction)


# -----------------------------------------------------------------------------
# Triton kernels. Each program handles whole rows (RMSNorm, cross-entropy) or a flat block (ReLU^2);
# all arithmetic is fp32 in registers, inputs and outputs keep the caller's dtype (bf16 in training).

if HAS_TRITON:

    @triton.jit
    def _rms_norm_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, n_cols, eps,
                             HAS_WEIGHT: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        y = x * rstd
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * n_cols + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + row, rstd)  # saved for the backward, so it never recomputes the statistics

    @triton.jit
    def _rms_norm_bwd_kernel(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_partial_ptr, n_rows, n_cols,
                             rows_per_program, HAS_WEIGHT: tl.constexpr, BLOCK: tl.constexpr):
        # dx = rstd * (w*dy - xhat * mean(w*dy*xhat)),  dw = sum over rows of dy*xhat.
        # Each program walks a contiguous range of rows and keeps its share of dw in registers, so dw
        # needs one small (programs, D) fp32 buffer and a sum, instead of atomics.
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        if HAS_WEIGHT:
            w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        dw_acc = tl.zeros((BLOCK,), dtype=tl.float32)
        row_start = pid * rows_per_program
        row_end = tl.minimum(row_start + rows_per_program, n_rows)
        offs = row_start.to(tl.int64) * n_cols + cols  # int64: rows * cols can pass 2^31
        for row in range(row_start, row_end):
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + row)
            xhat = x * rstd
            if HAS_WEIGHT:
                wdy = w * dy
                dw_acc += dy * xhat
            else:
                wdy = dy
            dx = rstd * (wdy - xhat * (tl.sum(wdy * xhat, axis=0) / n_cols))
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            offs += n_cols
        if HAS_WEIGHT:
            tl.store(dw_partial_ptr + pid.to(tl.int64) * n_cols + cols, dw_acc, mask=mask)

    @triton.jit
    def _relu2_fwd_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        r = tl.maximum(x, 0.0)
        tl.store(y_ptr + offs, (r * r).to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _relu2_bwd_kernel(dy_ptr, x_ptr, dx_ptr, n, BLOCK: tl.constexpr):
        # d/dx relu(x)^2 = 2 relu(x): only the pre-activation is kept for the backward, not relu(x)
        # and relu(x)^2 as eager PyTorch does, and the product with dy is fused in.
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dx = 2.0 * tl.maximum(x, 0.0) * dy
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _tanh(x):
        # tanh through the sigmoid: exact enough in fp32 and available on every backend and the interpreter
        return 2.0 * tl.sigmoid(2.0 * x) - 1.0

    @triton.jit
    def _softcap_cross_entropy_kernel(logits_ptr, stride_row, targets_ptr, grad_scale_ptr, loss_ptr,
                                      n_cols, softcap, ignore_index,
                                      HAS_SOFTCAP: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
                                      BLOCK: tl.constexpr):
        # One row of raw logits l (one token): z = softcap*tanh(l/softcap), loss = logsumexp(z) - z[target].
        # Pass 1 is an online logsumexp over blocks of the vocabulary. Pass 2 (COMPUTE_GRAD) overwrites the
        # logits in place with dloss/dl = (softmax(z) - onehot(target)) * (1 - tanh^2) * grad_scale[row],
        # so the gradient takes no memory beyond the chunk of logits that already exists.
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * stride_row
        target = tl.load(targets_ptr + row)
        m = float("-inf")
        s = 0.0
        z_target = 0.0
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            z = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_SOFTCAP:
                z = softcap * _tanh(z / softcap)
            z = tl.where(mask, z, float("-inf"))
            z_target += tl.sum(tl.where(cols == target, z, 0.0), axis=0)
            m_new = tl.maximum(m, tl.max(z, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        ignored = target == ignore_index
        tl.store(loss_ptr + row, tl.where(ignored, 0.0, lse - z_target))
        if COMPUTE_GRAD:
            scale = tl.where(ignored, 0.0, tl.load(grad_scale_ptr + row))
            for start in range(0, n_cols, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                mask = cols < n_cols
                z = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
                if HAS_SOFTCAP:
                    t = _tanh(z / softcap)
                    z = softcap * t
                grad = tl.exp(z - lse) - tl.where(cols == target, 1.0, 0.0)
                if HAS_SOFTCAP:
                    grad = grad * (1.0 - t * t)
                tl.store(row_ptr + cols, (grad * scale).to(logits_ptr.dtype.element_ty), mask=mask)


# -----------------------------------------------------------------------------
# Launchers and custom ops. The ops are registered with torch.library so torch.compile treats each as
# one opaque node (with the fake implementations below for shape inference) instead of tracing Triton.

def _require_triton(name: str):
    if not HAS_TRITON:
        raise RuntimeError(f"kernels.py: {name} needs Triton, which is not installed; "
                           f"use {name.replace('_triton', '_reference')} (the public functions fall back to it)")


def _num_warps(block: int) -> int:
    """num_warps for a row of `block` elements: enough threads to cover it, at most 16."""
    return max(1, min(16, block // 256))


def _programs_for(x, n_rows: int) -> int:
    """How many programs share the RMSNorm backward's rows: a few per SM on a GPU, a handful on CPU."""
    if x.is_cuda:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        return max(1, min(n_rows, 4 * sms))
    return max(1, min(n_rows, 4))


@torch.library.custom_op("kernels::rms_norm_fwd", mutates_args=())
def _rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    n_cols = x.shape[-1]
    x2 = x.reshape(-1, n_cols)
    y = torch.empty_like(x2)
    rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(n_cols)
    _rms_norm_fwd_kernel[(x2.shape[0],)](x2, weight if weight is not None else x2, y, rstd, n_cols, eps,
                                         HAS_WEIGHT=weight is not None, BLOCK=block,
                                         num_warps=_num_warps(block))
    return y.view(x.shape), rstd


@_rms_norm_fwd.register_fake
def _(x, weight, eps):
    return torch.empty_like(x), x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)


@torch.library.custom_op("kernels::rms_norm_bwd", mutates_args=())
def _rms_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
                  rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n_cols = x.shape[-1]
    x2 = x.reshape(-1, n_cols)
    dy2 = dy.reshape(-1, n_cols).contiguous()
    n_rows = x2.shape[0]
    dx = torch.empty_like(x2)
    programs = _programs_for(x, n_rows)
    rows_per_program = triton.cdiv(n_rows, programs)
    dw_partial = torch.empty(programs if weight is not None else 0, n_cols, dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(n_cols)
    _rms_norm_bwd_kernel[(programs,)](dy2, x2, weight if weight is not None else x2, rstd, dx, dw_partial,
                                      n_rows, n_cols, rows_per_program, HAS_WEIGHT=weight is not None,
                                      BLOCK=block, num_warps=_num_warps(block))
    dw = dw_partial.sum(0).to(weight.dtype) if weight is not None else x.new_empty(0)
    return dx.view(x.shape), dw


@_rms_norm_bwd.register_fake
def _(dy, x, weight, rstd):
    return torch.empty_like(x), (torch.empty_like(weight) if weight is not None else x.new_empty(0))


def _rms_norm_setup_context(ctx, inputs, output):
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_norm_backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = _rms_norm_bwd(dy, x, weight, rstd)
    return dx, (dw if weight is not None else None), None


_rms_norm_fwd.register_autograd(_rms_norm_backward, setup_context=_rms_norm_setup_context)


def rms_norm_triton(x, weight=None, eps: float = 1e-6):
    """The Triton RMSNorm (CUDA, or CPU tensors under TRITON_INTERPRET=1); same contract as the reference."""
    _require_triton("rms_norm_triton")
    if x.shape[-1] > 65536:
        raise ValueError(f"rms_norm_triton: rows of {x.shape[-1]} elements do not fit one block; use rms_norm_reference")
    return _rms_norm_fwd(x.contiguous(), weight, eps)[0]


@torch.library.custom_op("kernels::relu2_fwd", mutates_args=())
def _relu2_fwd(x: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    block = 1024
    _relu2_fwd_kernel[(triton.cdiv(x.numel(), block),)](x, y, x.numel(), BLOCK=block, num_warps=4)
    return y


@_relu2_fwd.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("kernels::relu2_bwd", mutates_args=())
def _relu2_bwd(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    block = 1024
    _relu2_bwd_kernel[(triton.cdiv(x.numel(), block),)](dy, x, dx, x.numel(), BLOCK=block, num_warps=4)
    return dx


@_relu2_bwd.register_fake
def _(dy, x):
    return torch.empty_like(x)


def _relu2_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _relu2_backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return _relu2_bwd(dy, x)


_relu2_fwd.register_autograd(_relu2_backward, setup_context=_relu2_setup_context)


def relu2_triton(x):
    """The Triton relu(x)^2 (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""
    _require_triton("relu2_triton")
    return _relu2_fwd(x.contiguous())


# The cross-entropy: the matmuls stay in cuBLAS, one chunk of tokens at a time; the Triton kernel does
# soft-cap + logsumexp + loss + gradient of the logits in place. With reduction "mean" and gradients
# wanted, the forward also runs the two backward matmuls per chunk (as Liger-Kernel does), so the chunk
# of logits is used and freed at once; the backward only scales grad_x and grad_w by the incoming
# gradient ("sum" works the same way). With "none" (per-token losses, e.g. for BPB) the per-token incoming gradients are unknown
# in the forward, so the backward recomputes each chunk's logits instead.

CE_MAX_BLOCK = 4096  # vocabulary elements per step of the kernel's loops (a power of two)


CE_CHUNK_BYTES = 256 * 2 ** 20  # the most one chunk of logits may take (its gradient is written in place)


def default_chunk_size(n_rows: int, vocab_size: int, itemsize: int = 2, budget: int | None = None) -> int:
    """Tokens per chunk: the largest power of two whose (chunk, vocab) logits fit in `budget` bytes (default
    CE_CHUNK_BYTES; CPU_CE_CHUNK_BYTES for the CPU chunks), and no more than the rows there are. Thousands of tokens at GPU vocabularies (2,048 for 50,304 in bf16, 1,024
    for 128,256), so each chunk's three matmuls are large enough to run near peak, while the memory stays
    bounded however many tokens a batch has."""
    rows = max(1, (budget or CE_CHUNK_BYTES) // (vocab_size * itemsize))
    return max(1, min(n_rows, 1 << (rows.bit_length() - 1)))


CPU_CE_CHUNK_BYTES = 2 * 2 ** 20  # on a CPU: chunks whose bf16 logits (fp32 while computed) stay in cache


def cross_entropy_chunk_torch(logits, targets, losses, grad_scale, softcap: float, ignore_index: int,
                              compute_grad: bool):
    """The Triton chunk kernel's contract in PyTorch (for CPUs, compiled): per-token losses of one chunk
    of raw logits (rows, V) into `losses`, and with compute_grad d(loss)/d(logits) * grad_scale written
    over the logits in place."""
    z = logits.float()
    if softcap > 0:
        t = torch.tanh(z / softcap)
        z = softcap * t
    lse = torch.logsumexp(z, dim=-1)
    ignored = targets == ignore_index
    safe = torch.where(ignored, 0, targets)
    losses.copy_(torch.where(ignored, 0.0, lse - z.gather(1, safe[:, None])[:, 0]))
    if compute_grad:
        onehot = torch.arange(z.size(1), device=z.device)[None, :] == safe[:, None]
        grad = torch.exp(z - lse[:, None]) - onehot.float()
        if softcap > 0:
            grad = grad * (1.0 - t * t)
        logits.copy_(grad * torch.where(ignored, 0.0, grad_scale)[:, None])


_COMPILED_CHUNK = None


def _cross_entropy_chunk_compiled(*args):
    global _COMPILED_CHUNK
    if _COMPILED_CHUNK is None:  # compiled at first use: one graph per chunk shape
        _COMPILED_CHUNK = torch.compile(cross_entropy_chunk_torch, dynamic=False)
    return _COMPILED_CHUNK(*args)


def _cross_entropy_chunk(logits, targets, losses, grad_scale, softcap, ignore_index, compute_grad, chunk="triton"):
    """Run one chunk of logits (rows, V): writes losses and, if asked, the gradient in place. chunk:
    "triton" (the kernel) or "torch" (cross_entropy_chunk_torch, compiled)."""
    if chunk == "torch":
        return _cross_entropy_chunk_compiled(logits, targets, losses, grad_scale if grad_scale is not None else losses,
                                             float(softcap), int(ignore_index), bool(compute_grad))
    n_rows, vocab = logits.shape
    block = min(CE_MAX_BLOCK, triton.next_power_of_2(vocab))
    _softcap_cross_entropy_kernel[(n_rows,)](
        logits, logits.stride(0), targets, grad_scale if grad_scale is not None else losses, losses,
        vocab, float(softcap), ignore_index, HAS_SOFTCAP=softcap > 0, COMPUTE_GRAD=compute_grad,
        BLOCK=block, num_warps=_num_warps(block))


def addmm_accumulates_into_fp32(version: str) -> bool:
    """Whether torch `version`'s CUDA addmm takes out_dtype=float32 with an fp32 `self` and bf16 matrices (a
    bf16 x bf16 product added into fp32 by the GEMM itself). The overload exists from 2.8, but until pytorch
    PR 167931 (issue 154086, merged in November 2025, first released in 2.10.0) its CUDA kernel required
    `self` in the matrices' dtype and raised "self and mat2 must have the same dtype". Pre-releases of 2.10
    (a0, dev) count as older: some predate the fix."""
    from torch.torch_version import TorchVersion
    return TorchVersion(version) >= "2.10"


ADDMM_OUT_DTYPE = addmm_accumulates_into_fp32(torch.__version__)


def _accumulate(grad_w, logits_t, x_chunk):
    """grad_w + logits_t @ x_chunk. fp32 grad_w with bf16 chunks: on CUDA with torch >= 2.10 the GEMM adds into
    fp32 directly (no vocab x width bf16 product copied to fp32 every chunk); elsewhere that copy is made."""
    if grad_w.dtype == x_chunk.dtype:
        return grad_w.addmm_(logits_t, x_chunk)
    if grad_w.is_cuda and ADDMM_OUT_DTYPE:
        return torch.addmm(grad_w, logits_t, x_chunk, out_dtype=grad_w.dtype)
    return grad_w.add_((logits_t @ x_chunk).to(grad_w.dtype))


def _chunked_linear_cross_entropy(x, weight, targets, grad_scale, softcap, ignore_index, chunk_size, compute_grad,
                                  chunk):
    """Per-token losses (fp32) and, when compute_grad, grad_x and grad_w of sum(grad_scale * losses)."""
    # An ambient autocast still reaches the matmuls inside a custom op and would change their dtypes under
    # the preallocated outputs (a bf16 product into an fp32 grad_x): the dtypes here are decided by x alone.
    with torch.autocast(x.device.type, enabled=False):
        return _chunked_linear_cross_entropy_exact(x, weight, targets, grad_scale, softcap, ignore_index, chunk_size,
                                                   compute_grad, chunk)


def _chunked_linear_cross_entropy_exact(x, weight, targets, grad_scale, softcap, ignore_index, chunk_size,
                                        compute_grad, chunk):
    n_rows, n_embd = x.shape
    w = weight.to(x.dtype)  # the head's matmul runs in the activations' dtype, as autocast would
    losses = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    grad_x = torch.empty_like(x) if compute_grad else x.new_empty(0)
    grad_w = (torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
              if compute_grad else x.new_empty(0))
    for start in range(0, n_rows, chunk_size):
        end = min(start + chunk_size, n_rows)
        x_chunk = x[start:end]
        logits = x_chunk @ w.t()  # (chunk, V) in x's dtype: the only logits that ever exist
        _cross_entropy_chunk(logits, targets[start:end], losses[start:end],
                             grad_scale[start:end] if grad_scale is not None else None,
                             softcap, ignore_index, compute_grad, chunk)
        if compute_grad:  # logits now hold d(loss)/d(logits)
            torch.mm(logits, w, out=grad_x[start:end])
            grad_w = _accumulate(grad_w, logits.t(), x_chunk)
    return losses, grad_x, (grad_w.to(weight.dtype) if compute_grad else grad_w)


@torch.library.custom_op("kernels::linear_cross_entropy_fwd", mutates_args=())
def _linear_ce_fwd(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float,
                   ignore_index: int, chunk_size: int, reduction: str,
                   grad_in_forward: bool, chunk: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if reduction == "none":
        losses, _, _ = _chunked_linear_cross_entropy(x, weight, targets, None, softcap, ignore_index,
                                                     chunk_size, False, chunk)
        return losses, x.new_empty(0), x.new_empty(0)
    # "mean": the gradient of the mean is that of the sum scaled by 1/n_valid, all on the device (no sync)
    n_valid = (targets != ignore_index).sum()
    scale = 1.0 / n_valid.float() if reduction == "mean" else torch.ones((), device=x.device)
    grad_scale = scale.expand(targets.shape[0]).contiguous()
    losses, grad_x, grad_w = _chunked_linear_cross_entropy(x, weight, targets, grad_scale, softcap, ignore_index,
                                                           chunk_size, grad_in_forward, chunk)
    return losses.sum() * scale, grad_x, grad_w


@_linear_ce_fwd.register_fake
def _(x, weight, targets, softcap, ignore_index, chunk_size, reduction, grad_in_forward, chunk):
    loss = x.new_empty(x.shape[0] if reduction == "none" else (), dtype=torch.float32)
    if grad_in_forward and reduction != "none":
        return loss, torch.empty_like(x), torch.empty_like(weight)
    return loss, x.new_empty(0), x.new_empty(0)


@torch.library.custom_op("kernels::linear_cross_entropy_bwd", mutates_args=())
def _linear_ce_bwd(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, grad_losses: torch.Tensor,
                   softcap: float, ignore_index: int, chunk_size: int, chunk: str) -> tuple[torch.Tensor, torch.Tensor]:
    _, grad_x, grad_w = _chunked_linear_cross_entropy(x, weight, targets, grad_losses.float().contiguous(), softcap,
                                                      ignore_index, chunk_size, True, chunk)
    return grad_x, grad_w


@_linear_ce_bwd.register_fake
def _(x, weight, targets, grad_losses, softcap, ignore_index, chunk_size, chunk):
    return torch.empty_like(x), torch.empty_like(weight)


def _linear_ce_setup_context(ctx, inputs, output):
    x, weight, targets, softcap, ignore_index, chunk_size, reduction, grad_in_forward, chunk = inputs
    ctx.reduction, ctx.softcap, ctx.ignore_index, ctx.chunk_size = reduction, softcap, ignore_index, chunk_size
    ctx.chunk = chunk
    ctx.grad_in_forward = grad_in_forward
    if reduction != "none":
        ctx.save_for_backward(output[1], output[2])  # grad_x, grad_w of the mean or sum, from the forward
    else:
        ctx.save_for_backward(x, weight, targets)


def _linear_ce_backward(ctx, grad_loss, _grad_x, _grad_w):
    if ctx.reduction != "none":
        if not ctx.grad_in_forward:
            raise RuntimeError("linear_cross_entropy: forward ran without gradients; call it with grad enabled")
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, None, None, None, None, None, None, None
    x, weight, targets = ctx.saved_tensors
    grad_x, grad_w = _linear_ce_bwd(x, weight, targets, grad_loss, ctx.softcap, ctx.ignore_index, ctx.chunk_size,
                                    ctx.chunk)
    return grad_x, grad_w, None, None, None, None, None, None, None


_linear_ce_fwd.register_autograd(_linear_ce_backward, setup_context=_linear_ce_setup_context)


def linear_cross_entropy_triton(x, weight, targets, softcap: float = 0.0, ignore_index: int = -1,
                                reduction: str = "mean", chunk_size: int | None = None):
    """The chunked Triton path of linear_cross_entropy; chunk_size (tokens per chunk) is exposed for tests."""
    _require_triton("linear_cross_entropy_triton")
    return linear_cross_entropy_chunked(x, weight, targets, softcap, ignore_index, reduction, chunk_size, "triton")


def linear_cross_entropy_chunked(x, weight, targets, softcap: float = 0.0, ignore_index: int = -1,
                                 reduction: str = "mean", chunk_size: int | None = None, chunk: str = "torch"):
    """linear_cross_entropy in chunks of tokens, each chunk's loss and gradient by `chunk`: "triton" (the
    kernel) or "torch" (cross_entropy_chunk_torch, compiled; CPU-sized chunks by default)."""
    _check_reduction(reduction)
    n_embd = x.shape[-1]
    x2 = x.reshape(-1, n_embd)
    targets1 = targets.reshape(-1).contiguous()
    if targets1.shape[0] != x2.shape[0]:
        raise ValueError(f"linear_cross_entropy: {x2.shape[0]} positions in x but {targets1.shape[0]} targets")
    budget = CE_CHUNK_BYTES if chunk == "triton" else CPU_CE_CHUNK_BYTES
    rows = chunk_size or default_chunk_size(x2.shape[0], weight.shape[0], x2.element_size(), budget)
    grad_in_forward = reduction != "none" and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    loss = _linear_ce_fwd(x2, weight, targets1, float(softcap), int(ignore_index), int(rows), reduction,
                          grad_in_forward, chunk)[0]
    return loss.view(targets.shape) if reduction == "none" else loss
