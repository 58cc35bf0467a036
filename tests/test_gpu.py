"""GPU tests (`python -m pytest -m gpu`): the kernels against their references at real shapes, the compiled
model as one graph that never recompiles, bf16 against fp32 training, the dtypes and kernels the CUDA paths
pick (checked on a CPU with fake CUDA tensors in test_model.py and test_kernels.py), and train.py end to end
on CUDA. They skip without a CUDA device."""
import json
import subprocess
import sys

import pytest
import torch


import eval_bpb
import kernels
import model as M
import train
from helpers import ROOT, write_prepared_dir
from model import GPT, build_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("n_tokens, d, vocab", [(16 * 1024, 768, 50304), (32 * 1024, 512, 8192)])
def test_fused_head_matches_the_reference_at_real_shapes(n_tokens, d, vocab):
    torch.manual_seed(0)
    x = torch.randn(n_tokens, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(vocab, d, device="cuda") / d ** 0.5).requires_grad_()
    t = torch.randint(0, vocab, (n_tokens,), device="cuda")
    loss = kernels.linear_cross_entropy_triton(x, w, t, 15.0)
    loss.backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad, w.grad = None, None
    ref = kernels.linear_cross_entropy_reference(x, w, t, 15.0)
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(gx.float(), x.grad.float(), atol=2e-3, rtol=5e-2)
    torch.testing.assert_close(gw, w.grad, atol=2e-4, rtol=5e-2)


def test_norm_and_relu2_kernels_match_at_real_shapes():
    torch.manual_seed(0)
    x = torch.randn(16 * 1024, 768, device="cuda", dtype=torch.bfloat16)
    w = torch.rand(768, device="cuda") + 0.5
    torch.testing.assert_close(kernels.rms_norm_triton(x, w), kernels.rms_norm_reference(x, w), atol=2e-2, rtol=2e-2)
    h = torch.randn(16 * 1024, 3072, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(kernels.relu2_triton(h), kernels.relu2_reference(h))


@pytest.mark.parametrize("overrides", [{}, dict(doc_mask=True, delimiter_id=0, window=512, short_window=128,
                                                x0_mix=True, value_residual=True, unet=True)])
def test_compiled_model_is_one_graph_and_never_recompiles(overrides):
    import torch._dynamo
    torch._dynamo.reset()
    config = build_config("small", 8192, 1024, **overrides)
    model = GPT(config).cuda()
    compiled = torch.compile(model, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(3):
            idx = torch.randint(0, 8192, (8, 1025), device="cuda", generator=torch.Generator("cuda").manual_seed(step))
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = compiled(idx[:, :-1], idx[:, 1:])
            loss.backward()
            if config.attention_masked:
                model.set_windows(256 * (step + 1), 64 * (step + 1))  # a window change must not recompile
    assert torch.isfinite(loss)


def test_bf16_training_tracks_fp32():
    """bf16 autocast (fp32 master weights) against fp32 from the same start, 40 steps of the real step."""
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        config = build_config("tiny", 4096, 256)
        model = GPT(config).cuda()
        hp = train.Hyperparameters(preset="tiny", seq_len=256, batch_size=16)
        optimizers = train.build_optimizers(model, hp, 0, 1, torch.device("cuda"))
        run = type("R", (), dict(optimizers=optimizers, world_size=1, device=torch.device("cuda"), hp=hp))
        gen = torch.Generator("cuda").manual_seed(1)
        data = torch.randint(0, 512, (40, 16, 257), device="cuda", generator=gen)  # a learnable small vocabulary
        out = []
        for batch in data:
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is torch.bfloat16):
                loss = model(batch[:, :-1], batch[:, 1:])
            loss.backward()
            muon_grads, _ = train.reduce_and_clip_gradients(run)
            optimizers[0].step()
            optimizers[1].step(muon_grads)
            model.zero_grad(set_to_none=True)
            out.append(loss.item())
        losses[dtype] = out
    assert abs(sum(losses[torch.bfloat16][-5:]) - sum(losses[torch.float32][-5:])) / 5 < 0.05, losses


def test_train_py_end_to_end_on_cuda(tmp_path):
    data = write_prepared_dir(tmp_path / "data", train=["Tom had a red ball. " * 20] * 400,
                              val=["Mia had a blue kite. " * 10] * 20, shard_tokens=100_000)
    cmd = [sys.executable, "train.py", f"--data_dir={data}", "--preset=tiny", "--seq_len=128", "--batch_size=8",
           "--max_steps=30", "--val_every=10", "--checkpoint_every=10", "--device=cuda",
           f"--out_dir={tmp_path / 'r'}", f"--ckpt_dir={tmp_path / 'c'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "r" / "results.json").read_text())
    assert record["training"]["steps"] == 30 and 0 < record["compute"]["mfu"] <= 1
    resumed = subprocess.run(cmd[:-2] + ["--max_steps=40", "--resume=1", f"--out_dir={tmp_path / 'r2'}",
                                         f"--ckpt_dir={tmp_path / 'c'}"], cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_weight_gradient_accumulation_into_fp32_matches_on_this_torch():
    """kernels._accumulate on CUDA: with torch >= 2.10 torch.addmm(out_dtype=fp32) adds bf16 chunks into the fp32
    gradient in the GEMM (older torch raised there: pytorch issue 154086); either path equals the fp32 sum."""
    torch.manual_seed(0)
    grad_w = torch.randn(8192, 512, device="cuda")
    logits_t = torch.randn(8192, 1024, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1024, 512, device="cuda", dtype=torch.bfloat16)
    want = grad_w + logits_t.float() @ x.float()
    got = kernels._accumulate(grad_w.clone(), logits_t, x)
    assert got.dtype == torch.float32 and kernels.ADDMM_OUT_DTYPE == kernels.addmm_accumulates_into_fp32(torch.__version__)
    torch.testing.assert_close(got, want, atol=0.5, rtol=2e-2)


def test_masked_configs_run_flex_and_sdpa_in_bf16_without_the_math_kernel():
    """value embeddings + windows + document mask under bf16 autocast: flex_attention gets one dtype, and the
    dense masks path with grouped queries runs with the math kernel switched off."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    config = build_config("small", 8192, 1024, value_embeds=2, window=512, short_window=128, doc_mask=True,
                          delimiter_id=0)
    model = GPT(config).cuda()
    idx = torch.randint(0, 8192, (4, 1025), device="cuda")
    seen = []
    attend = M._attend

    def spy(q, k, v, mask, gqa):
        seen.append((q.dtype, k.dtype, v.dtype))
        return attend(q, k, v, mask, gqa)

    M._attend = spy
    try:
        losses = {}
        for impl in ("auto", "sdpa"):
            model.attention_impl = impl
            with torch.autocast("cuda", dtype=torch.bfloat16), \
                    sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
                losses[impl] = model(idx[:, :-1], idx[:, 1:])
            losses[impl].backward()
    finally:
        M._attend = attend
    assert set(seen) == {(torch.bfloat16,) * 3}
    torch.testing.assert_close(losses["auto"], losses["sdpa"], atol=2e-2, rtol=2e-2)


def test_validation_autocasts_only_in_the_dtype_asked_for():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, idx, targets, reduction="none"):
            seen.append(torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None)
            return torch.zeros(idx.shape, device=idx.device)

    tokens, token_bytes = torch.arange(1, 65).numpy(), torch.ones(100, dtype=torch.long)
    for dtype in (None, torch.bfloat16):
        eval_bpb.evaluate_bpb(Probe(), tokens, token_bytes, 16, 2, "cuda", amp_dtype=dtype)
    assert seen[0] is None and seen[-1] is torch.bfloat16 and set(seen) == {None, torch.bfloat16}


def test_the_device_path_of_this_gpu_is_printed(tmp_path):
    data = write_prepared_dir(tmp_path / "data", train=["Tom had a red ball. " * 20] * 200,
                              val=["Mia had a blue kite. " * 10] * 10, shard_tokens=100_000)
    cmd = [sys.executable, "train.py", f"--data_dir={data}", "--preset=tiny", "--seq_len=128", "--batch_size=8",
           "--max_steps=2", "--val_every=0", "--device=cuda", "--compile=0", "--window=64",
           f"--out_dir={tmp_path / 'r'}", f"--ckpt_dir={tmp_path / 'c'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = train.run_device_path(train.parse_args(cmd[2:]), torch.device("cuda")).describe()
    assert f"device path: {expected}" in proc.stdout
