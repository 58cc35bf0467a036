"""Tests for kernels.py.

Three layers:
1. the PyTorch references against independent float64 formulas (always run, CPU);
2. every Triton kernel, forward and gradients, against its reference on CPU under TRITON_INTERPRET=1
   (the test_interp_* tests). Triton decides between compiling and interpreting when a kernel is
   decorated, i.e. when kernels.py is imported; in a normal pytest run another test file may already
   have imported it, so test_triton_kernels_under_interpreter re-runs the test_interp_* tests in a
   fresh Python with the variable set. `TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py`
   runs them directly;
3. the Triton kernels on CUDA at realistic shapes (skipped without a GPU).
"""
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import kernels
from helpers import ROOT

INTERPRETED = kernels.HAS_TRITON and type(kernels._relu2_fwd_kernel).__name__ == "InterpretedFunction"
needs_interpreter = pytest.mark.skipif(
    not INTERPRETED, reason="needs TRITON_INTERPRET=1 before kernels.py is imported; "
                            "test_triton_kernels_under_interpreter runs these in a subprocess")
_cuda_and_triton = pytest.mark.skipif(not (kernels.HAS_TRITON and torch.cuda.is_available()),
                                      reason="needs a CUDA GPU and Triton")


def needs_cuda(test):
    """The CUDA tests: skipped without a GPU, and marked gpu so that `python -m pytest -m gpu` runs them."""
    return pytest.mark.gpu(_cuda_and_triton(test))


# -----------------------------------------------------------------------------
# Independent formulas, in float64, written without the helpers kernels.py uses.

def rms_norm_formula(x, weight, eps):
    x = x.double()
    y = x / torch.sqrt((x * x).sum(-1, keepdim=True) / x.shape[-1] + eps)
    return y * weight.double() if weight is not None else y


def relu2_formula(x):
    return torch.where(x > 0, x * x, torch.zeros_like(x))


def cross_entropy_formula(x, weight, targets, softcap, ignore_index, reduction):
    logits = x.double() @ weight.double().T
    if softcap > 0:
        logits = softcap * torch.tanh(logits / softcap)
    logits = logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    valid = t != ignore_index
    picked = logits.gather(1, t.clamp(min=0)[:, None])[:, 0]
    losses = torch.where(valid, torch.logsumexp(logits, dim=1) - picked, torch.zeros_like(picked))
    if reduction == "mean":
        return losses.sum() / valid.sum()
    if reduction == "sum":
        return losses.sum()
    return losses.view(targets.shape)


def make_ce_inputs(n_rows=14, n_embd=16, vocab=50, dtype=torch.float32, seed=0, shape=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, n_embd, generator=g).to(dtype)
    w = (torch.randn(vocab, n_embd, generator=g) / n_embd ** 0.5)
    t = torch.randint(0, vocab, (n_rows,), generator=g)
    t[1] = -1
    t[n_rows - 2] = -1
    if shape is not None:
        x, t = x.view(*shape, n_embd), t.view(shape)
    return x.requires_grad_(), w.requires_grad_(), t


# -----------------------------------------------------------------------------
# 1. References

@pytest.mark.parametrize("with_weight", [True, False])
def test_rms_norm_reference_matches_formula(with_weight):
    x = torch.randn(3, 5, 24)
    w = torch.randn(24) if with_weight else None
    torch.testing.assert_close(kernels.rms_norm_reference(x, w, 1e-5).double(), rms_norm_formula(x, w, 1e-5),
                               atol=1e-5, rtol=1e-5)


def test_rms_norm_reference_keeps_dtype_and_normalises():
    x = (torch.randn(4, 64) * 30).to(torch.bfloat16)
    y = kernels.rms_norm_reference(x, torch.ones(64))
    assert y.dtype == torch.bfloat16
    rms = y.float().pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones(4), atol=1e-2, rtol=0)


def test_relu2_reference_matches_formula():
    x = torch.randn(7, 33)
    x[0, :3] = torch.tensor([0.0, -2.0, 3.0])
    torch.testing.assert_close(kernels.relu2_reference(x), relu2_formula(x))
    assert kernels.relu2_reference(torch.tensor([3.0])).item() == 9.0


@pytest.mark.parametrize("softcap", [0.0, 15.0, 2.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_reference_matches_formula(softcap, reduction):
    x, w, t = make_ce_inputs(shape=(2, 7))
    x = x.detach() * 4  # large logits, so a soft-cap of 2 changes the loss a lot
    got = kernels.linear_cross_entropy_reference(x, w, t, softcap, -1, reduction)
    want = cross_entropy_formula(x, w, t, softcap, -1, reduction)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)
    if reduction == "none":
        assert got.shape == t.shape and got.dtype == torch.float32
        assert got[t == -1].eq(0).all() and got[t != -1].gt(0).all()


def test_cross_entropy_reference_equals_torch_cross_entropy_on_capped_logits():
    x, w, t = make_ce_inputs()
    logits = 15.0 * torch.tanh((x @ w.T) / 15.0)
    torch.testing.assert_close(kernels.linear_cross_entropy_reference(x, w, t, 15.0),
                               F.cross_entropy(logits, t, ignore_index=-1))


def test_softcap_bounds_logits_and_is_identity_when_off():
    z = torch.tensor([-1e4, -3.0, 0.0, 3.0, 1e4])
    capped = kernels.softcap_logits(z, 15.0)
    assert capped.abs().max() <= 15.0 and capped[2] == 0
    assert torch.equal(kernels.softcap_logits(z, 0.0), z)


def test_bad_reduction_is_rejected():
    x, w, t = make_ce_inputs()
    with pytest.raises(ValueError, match="reduction"):
        kernels.linear_cross_entropy(x, w, t, reduction="max")


def test_public_functions_use_reference_on_cpu():
    x, w, t = make_ce_inputs()
    assert isinstance(kernels.HAS_TRITON, bool)
    assert torch.equal(kernels.rms_norm(x, w[0]), kernels.rms_norm_reference(x, w[0]))
    assert torch.equal(kernels.relu2(x), kernels.relu2_reference(x))
    assert torch.equal(kernels.linear_cross_entropy(x, w, t, 15.0, -1, "none"),
                       kernels.linear_cross_entropy_reference(x, w, t, 15.0, -1, "none"))


def test_everything_works_without_triton():
    # a Python where `import triton` fails: the module imports, the public functions use the references,
    # and the Triton entry points say what to use instead
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, kernels\n"
        "assert kernels.HAS_TRITON is False\n"
        "x = torch.randn(4, 8); w = torch.randn(11, 8); t = torch.tensor([1, -1, 3, 10])\n"
        "assert torch.equal(kernels.rms_norm(x, None), kernels.rms_norm_reference(x, None))\n"
        "assert torch.equal(kernels.linear_cross_entropy(x, w, t), kernels.linear_cross_entropy_reference(x, w, t))\n"
        "try:\n    kernels.relu2_triton(x)\nexcept RuntimeError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "relu2_reference" in proc.stdout


@pytest.mark.skipif(not kernels.HAS_TRITON, reason="needs Triton")
def test_ce_chunks_are_thousands_of_tokens_and_memory_stays_bounded():
    # GPU vocabularies: thousands of tokens per chunk, so the head's matmuls are large
    assert kernels.default_chunk_size(65536, 50304) == 2048          # GPT-2, bf16
    assert kernels.default_chunk_size(65536, 128256) == 1024         # Llama 3, bf16
    assert kernels.default_chunk_size(65536, 50304, itemsize=4) == 1024
    assert kernels.default_chunk_size(100, 256) == 100               # never more than the rows there are
    # however the tokens and the vocabulary grow, one chunk of logits stays within the budget
    for n_rows in (1, 1000, 2 ** 16, 2 ** 22):
        for vocab in (256, 8192, 50304, 128256, 2 ** 20, 2 ** 28):
            for itemsize in (2, 4):
                chunk = kernels.default_chunk_size(n_rows, vocab, itemsize)
                assert 1 <= chunk <= n_rows
                assert chunk * vocab * itemsize <= kernels.CE_CHUNK_BYTES or chunk == 1


@pytest.mark.parametrize("softcap", [0.0, 15.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cpu_chunked_cross_entropy_equals_the_reference(softcap, reduction):
    # the CPU path of a compiled model: the chunked op with compiled PyTorch chunks (4 + 4 + 4 + 2 tokens)
    x, w, t = make_ce_inputs(shape=(2, 7))
    got = kernels.linear_cross_entropy_chunked(x, w, t, softcap, -1, reduction, chunk_size=4, chunk="torch")
    want = kernels.linear_cross_entropy_reference(x, w, t, softcap, -1, reduction)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g_got, g_want in zip(grads(got, (x, w)), grads(want, (x, w))):
        torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-5)


def test_cpu_chunked_cross_entropy_in_a_compiled_model_and_bf16():
    x, w, t = make_ce_inputs(n_rows=12, dtype=torch.bfloat16)
    got = kernels.linear_cross_entropy_chunked(x, w, t, 15.0, chunk_size=5)
    want = kernels.linear_cross_entropy_reference(x, w, t, 15.0)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)
    (gx, gw), (wx, ww) = grads(got, (x, w)), grads(want, (x, w))
    assert gx.dtype == torch.bfloat16 and gw.dtype == torch.float32
    torch.testing.assert_close(gx.float(), wx.float(), atol=2e-2, rtol=5e-2)
    torch.testing.assert_close(gw, ww, atol=2e-2, rtol=5e-2)
    # inside torch.compile on a CPU, linear_cross_entropy takes the chunked op, outside the reference
    x, w, t = make_ce_inputs()
    ops = []

    def record_ops(graph_module, example_inputs):
        ops.extend(str(node.target) for node in graph_module.graph.nodes)
        return graph_module.forward

    torch.compile(kernels.linear_cross_entropy, backend=record_ops, fullgraph=True)(x, w, t, 15.0)
    assert any("linear_cross_entropy_fwd" in op for op in ops), ops
    compiled = torch.compile(kernels.linear_cross_entropy, backend="aot_eager", fullgraph=True)
    got = compiled(x, w, t, 15.0)
    torch.testing.assert_close(got, kernels.linear_cross_entropy(x, w, t, 15.0))
    for a, b in zip(torch.autograd.grad(got, (x, w)), torch.autograd.grad(kernels.linear_cross_entropy(x, w, t, 15.0),
                                                                           (x, w))):
        torch.testing.assert_close(a, b)
    assert kernels.default_chunk_size(4096, 4096, 2, kernels.CPU_CE_CHUNK_BYTES) == 256  # in cache, not in memory


# -----------------------------------------------------------------------------
# 2. Triton kernels under the interpreter, on CPU, small shapes

@pytest.mark.skipif(not kernels.HAS_TRITON, reason="needs Triton")
def test_triton_kernels_under_interpreter():
    if INTERPRETED:
        pytest.skip("already interpreted: the test_interp_* tests run in this process")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_interp_",
                           str(pathlib.Path(__file__))], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    return torch.autograd.grad(out, inputs, g)


@needs_interpreter
@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("shape", [(15, 40), (2, 3, 8)])  # 15 rows: uneven split over the backward's 4 programs
def test_interp_rms_norm_forward_and_backward(shape, with_weight):
    x = torch.randn(shape, requires_grad=True)
    w = (torch.rand(shape[-1]) + 0.5).requires_grad_() if with_weight else None
    y, y_ref = kernels.rms_norm_triton(x, w, 1e-6), kernels.rms_norm_reference(x, w, 1e-6)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    inputs = (x, w) if with_weight else (x,)
    for got, want in zip(grads(y, inputs), grads(y_ref, inputs)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@needs_interpreter
def test_interp_rms_norm_bf16_input_fp32_weight():
    x = torch.randn(6, 32).to(torch.bfloat16).requires_grad_()
    w = (torch.rand(32) + 0.5).requires_grad_()
    y, y_ref = kernels.rms_norm_triton(x, w), kernels.rms_norm_reference(x, w)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, atol=2e-2, rtol=1e-2)
    for got, want in zip(grads(y, (x, w)), grads(y_ref, (x, w))):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, atol=3e-2, rtol=2e-2)


@needs_interpreter
def test_interp_relu2_forward_and_backward():
    x = torch.randn(3, 700, requires_grad=True)  # 2100 elements: two full blocks of 1024 and a partial one
    y, y_ref = kernels.relu2_triton(x), kernels.relu2_reference(x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(grads(y, (x,))[0], grads(y_ref, (x,))[0])


@needs_interpreter
@pytest.mark.parametrize("softcap", [0.0, 15.0, 1.5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_interp_linear_cross_entropy_forward_and_backward(softcap, reduction, monkeypatch):
    # 50-token vocabulary in blocks of 16 (three full and one partial step of the kernel's loops);
    # 14 tokens in chunks of 4 (three full chunks and a partial one); two ignored targets
    monkeypatch.setattr(kernels, "CE_MAX_BLOCK", 16)
    x, w, t = make_ce_inputs(shape=(2, 7))
    got = kernels.linear_cross_entropy_triton(x, w, t, softcap, -1, reduction, chunk_size=4)
    want = kernels.linear_cross_entropy_reference(x, w, t, softcap, -1, reduction)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g_got, g_want in zip(grads(got, (x, w)), grads(want, (x, w))):
        torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-5)


@needs_interpreter
def test_interp_linear_cross_entropy_no_grad_and_single_chunk_agree():
    x, w, t = make_ce_inputs()
    want = kernels.linear_cross_entropy_reference(x, w, t, 15.0)
    with torch.no_grad():  # the forward skips the gradient work, the loss is the same
        torch.testing.assert_close(kernels.linear_cross_entropy_triton(x, w, t, 15.0, chunk_size=3), want)
    torch.testing.assert_close(kernels.linear_cross_entropy_triton(x, w, t, 15.0), want)  # default chunking


@needs_interpreter
def test_interp_linear_cross_entropy_bf16_activations_fp32_head():
    # training's dtypes: bf16 activations, fp32 head weight; the head's gradient is accumulated in fp32
    x, w, t = make_ce_inputs(n_rows=12, dtype=torch.bfloat16)
    for reduction in ("mean", "none"):
        got = kernels.linear_cross_entropy_triton(x, w, t, 15.0, -1, reduction, chunk_size=5)
        want = kernels.linear_cross_entropy_reference(x, w, t, 15.0, -1, reduction)
        torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)
        (gx, gw), (wx, ww) = grads(got, (x, w)), grads(want, (x, w))
        assert gx.dtype == torch.bfloat16 and gw.dtype == torch.float32
        torch.testing.assert_close(gx, wx, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(gw, ww, atol=2e-2, rtol=2e-2)


@needs_interpreter
def test_interp_linear_cross_entropy_under_autocast():
    # train.py runs the model under bf16 autocast: an fp32 input must still give fp32-consistent results
    # (autocast must not change the dtypes of the matmuls inside the op under its preallocated outputs)
    x, w, t = make_ce_inputs(n_rows=10)
    want = kernels.linear_cross_entropy_reference(x, w, t, 15.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = kernels.linear_cross_entropy_triton(x, w, t, 15.0, chunk_size=4)
        gx, gw = grads(got, (x, w))
    wx, ww = grads(want, (x, w))
    assert gx.dtype == torch.float32 and gw.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, wx, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw, ww, atol=1e-5, rtol=1e-5)


@needs_interpreter
def test_interp_custom_ops_pass_opcheck():
    # torch.library's own checks: schema, fake (meta) implementations, autograd registration
    x, w, t = make_ce_inputs(n_rows=6, vocab=20)
    xd = x.detach()
    checks = ["test_schema", "test_faketensor", "test_autograd_registration"]
    torch.library.opcheck(kernels._rms_norm_fwd, (x, w[0].detach().requires_grad_(), 1e-6), test_utils=checks)
    torch.library.opcheck(kernels._relu2_fwd, (x,), test_utils=checks)
    for chunk in ("triton", "torch"):
        torch.library.opcheck(kernels._linear_ce_fwd, (x, w, t, 15.0, -1, 4, "mean", True, chunk), test_utils=checks)
        torch.library.opcheck(kernels._linear_ce_fwd, (x, w, t, 15.0, -1, 4, "none", False, chunk), test_utils=checks)
        torch.library.opcheck(kernels._linear_ce_bwd, (xd, w.detach(), t, torch.rand(6), 15.0, -1, 4, chunk),
                              test_utils=checks[:2])


@needs_interpreter
def test_interp_ops_compose_with_torch_compile():
    # aot_eager traces through the fake implementations and the registered backward (no C++ compiler needed)
    x, w, t = make_ce_inputs(n_rows=8, vocab=20)
    nw = (torch.rand(16) + 0.5).requires_grad_()

    def step(x, nw, w, t):
        h = kernels.relu2_triton(kernels.rms_norm_triton(x, nw))
        return kernels.linear_cross_entropy_triton(h, w, t, 15.0)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got, want = compiled(x, nw, w, t), step(x, nw, w, t)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, (x, nw, w)), torch.autograd.grad(want, (x, nw, w))):
        torch.testing.assert_close(a, b)


# -----------------------------------------------------------------------------
# 3. CUDA, realistic shapes (124M model: 768 wide, 3072 MLP, 50304 vocabulary)

@needs_cuda
@pytest.mark.parametrize("with_weight", [True, False])
def test_cuda_rms_norm(with_weight):
    x = torch.randn(8, 1024, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.rand(768, device="cuda") + 0.5).requires_grad_() if with_weight else None
    y, y_ref = kernels.rms_norm(x, w), kernels.rms_norm_reference(x, w)
    torch.testing.assert_close(y, y_ref, atol=2e-2, rtol=1e-2)
    inputs = (x, w) if with_weight else (x,)
    for got, want in zip(grads(y.float(), inputs), grads(y_ref.float(), inputs)):
        torch.testing.assert_close(got, want, atol=5e-2, rtol=2e-2)


@needs_cuda
def test_cuda_relu2():
    x = torch.randn(8 * 1024, 3072, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y, y_ref = kernels.relu2(x), kernels.relu2_reference(x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(grads(y.float(), (x,))[0], grads(y_ref.float(), (x,))[0])


@needs_cuda
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cuda_linear_cross_entropy(reduction):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8192, 768, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(50304, 768, device="cuda", generator=g) / 768 ** 0.5).requires_grad_()
    t = torch.randint(0, 50257, (8192,), device="cuda", generator=g)
    t[::97] = -1
    got = kernels.linear_cross_entropy(x, w, t, 15.0, -1, reduction)
    want = kernels.linear_cross_entropy_reference(x, w, t, 15.0, -1, reduction)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    (gx, gw), (wx, ww) = grads(got.float(), (x, w)), grads(want.float(), (x, w))
    torch.testing.assert_close(gx.float(), wx.float(), atol=1e-2, rtol=2e-2)
    torch.testing.assert_close(gw, ww, atol=1e-2, rtol=2e-2)


@needs_cuda
def test_cuda_ops_compose_with_inductor():
    x = torch.randn(4, 256, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    nw = torch.ones(768, device="cuda", requires_grad=True)
    w = (torch.randn(50304, 768, device="cuda") / 768 ** 0.5).requires_grad_()
    t = torch.randint(0, 50257, (4, 256), device="cuda")

    def step(x, nw, w, t):
        return kernels.linear_cross_entropy(kernels.relu2(kernels.rms_norm(x, nw)), w, t, 15.0)

    got, want = torch.compile(step, fullgraph=True)(x, nw, w, t), step(x, nw, w, t)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


# -----------------------------------------------------------------------------
# What runs where, decided on a CPU: the addmm gate, Triton's devices, the gpu marker

@pytest.mark.parametrize("version, mixes", [
    ("2.8.0", False), ("2.9.1+cu128", False),            # the overload exists, its CUDA kernel refuses fp32 self
    ("2.10.0.dev20251101", False), ("2.10.0a0+git1234", False),  # pre-releases of 2.10: maybe before the fix
    ("2.10.0", True), ("2.10.1+cu130", True), ("2.13.0+cpu", True), ("3.0.0", True)])
def test_addmm_out_dtype_is_used_from_the_release_with_the_fix(version, mixes):
    assert kernels.addmm_accumulates_into_fp32(version) is mixes


@pytest.mark.parametrize("gate", [False, True])
def test_weight_gradient_accumulates_through_addmm_only_where_it_takes_mixed_dtypes(gate, monkeypatch):
    """On (fake) CUDA tensors: torch.addmm(out_dtype=fp32) with an fp32 grad_w where the gate allows it, the
    bf16 product copied into fp32 otherwise; fp32 either way."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    calls = []
    addmm = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(k.get("out_dtype")) or addmm(*a, **k))
    monkeypatch.setattr(kernels, "ADDMM_OUT_DTYPE", gate)
    with FakeTensorMode():
        grad_w = torch.zeros(64, 32, device="cuda")
        logits_t = torch.empty(64, 16, device="cuda", dtype=torch.bfloat16)
        x = torch.empty(16, 32, device="cuda", dtype=torch.bfloat16)
        out = kernels._accumulate(grad_w, logits_t, x)
    assert out.dtype == torch.float32 and out.shape == (64, 32)
    assert calls == ([torch.float32] if gate else [])


def test_triton_runs_on_gpus_of_compute_capability_7_and_up(monkeypatch):
    """kernels.py's Triton path, torch.compile and flex_attention on a GPU need Triton, which stops at
    compute capability 7.0 (Pascal, GTX 10xx: the reference paths run there)."""
    from types import SimpleNamespace
    assert not kernels.triton_supports("cpu")
    monkeypatch.setattr(torch.version, "hip", None)
    for major, runs in ((6, False), (7, True), (9, True)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, m=major: SimpleNamespace(major=m))
        assert kernels.triton_supports("cuda") is (runs and kernels.HAS_TRITON)
    monkeypatch.setattr(kernels, "HAS_TRITON", False)  # Windows without Triton, say
    assert not kernels.triton_supports("cuda")


def test_every_cuda_test_is_in_the_gpu_selection():
    """`python -m pytest -m gpu` runs every test that needs CUDA; without a GPU they are collected and skipped."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "--collect-only", "-q", "tests"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    collected = {line.split("[")[0] for line in proc.stdout.splitlines() if "::" in line}
    wanted = {f"tests/test_kernels.py::{name}" for name in globals() if name.startswith("test_cuda_")}
    wanted |= {"tests/test_model.py::test_cuda_bf16_forward_and_generation",
               "tests/test_gpu.py::test_train_py_end_to_end_on_cuda"}
    assert len(wanted) == 6 and wanted <= collected, sorted(wanted - collected)

