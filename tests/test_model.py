"""Tests for model.py: configurations and presets, the forward and its losses, the kernel switch, KV-cache
generation, checkpoints."""
import math
import os
from dataclasses import asdict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import model as M
from conftest import tiny_config
from model import GPT, GPTConfig

ROOT = os.path.dirname(M.__file__)


def test_padded_vocab_size():
    assert M.padded_vocab_size(50257) == 50304
    assert M.padded_vocab_size(8192) == 8192
    assert M.padded_vocab_size(8193) == 8256
    assert M.padded_vocab_size(100, multiple=128) == 128


def test_bad_configs_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        GPTConfig(n_head=6, n_kv_head=4)
    with pytest.raises(ValueError, match="mlp"):
        GPTConfig(mlp="relu")
    with pytest.raises(ValueError, match="unknown GPTConfig"):
        M.config_from_dict({"n_layers": 3})
    for zero in ("n_head", "n_kv_head", "n_layer", "n_embd"):  # a clear error, not a ZeroDivisionError
        with pytest.raises(ValueError, match="must be positive"):
            GPTConfig(**{zero: 0})
    with pytest.raises(ValueError, match="d_ff"):
        GPTConfig(mlp_ratio=0.0)  # an MLP of width 0 would silently drop the MLP


def test_resolve_device():
    assert M.resolve_device("cpu") == torch.device("cpu")
    assert M.resolve_device(None).type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="not a device name"):
        M.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            M.resolve_device("cuda")
    else:
        with pytest.raises(ValueError, match="not available"):
            M.resolve_device(f"cuda:{torch.cuda.device_count()}")


# ----------------------------------------------------------------------------- forward and losses

def test_logits_loss_and_per_token_losses():
    torch.manual_seed(0)
    config = tiny_config(logit_softcap=5.0)
    model = GPT(config)
    idx = torch.randint(0, 96, (2, 20))
    targets = torch.randint(0, 96, (2, 20))
    targets[0, :7] = -1
    logits = model(idx)
    assert logits.shape == (2, 20, 96) and logits.dtype == torch.float32
    assert logits.abs().max() < 5.0  # soft-capped
    reference = F.cross_entropy(logits.view(-1, 96), targets.view(-1), ignore_index=-1, reduction="none").view(2, 20)
    per_token = model(idx, targets, reduction="none")
    assert per_token.shape == (2, 20) and per_token.dtype == torch.float32
    assert torch.allclose(per_token, reference, atol=1e-5)
    assert (per_token[0, :7] == 0).all()
    mean = model(idx, targets)
    assert torch.allclose(mean, reference.sum() / (targets != -1).sum(), atol=1e-5)
    assert torch.allclose(model(idx, targets, reduction="sum"), reference.sum(), atol=1e-4)


def test_kernel_path_equals_plain_torch_path():
    torch.manual_seed(0)
    model = GPT(tiny_config(value_embeds=1))
    idx, targets = torch.randint(0, 96, (2, 16)), torch.randint(0, 96, (2, 16))
    with_kernels = model(idx, targets)
    model.use_kernels = False  # one runtime switch, reaching every module
    assert torch.allclose(with_kernels, model(idx, targets), atol=1e-5)


def test_zero_init_starts_at_uniform_prediction():
    model = GPT(tiny_config(zero_init=True))
    idx = torch.randint(0, 96, (2, 16))
    assert torch.allclose(model(idx, idx), torch.tensor(math.log(96)), atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"rope": False}, {"value_embeds": 1, "n_unique_layers": 1}])
def test_causal_future_tokens_do_not_change_past_logits(overrides):
    torch.manual_seed(0)
    model = GPT(tiny_config(**overrides))
    idx = torch.randint(0, 96, (1, 24))
    changed = idx.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % 96
    assert torch.allclose(model(idx)[0, :12], model(changed)[0, :12], atol=1e-5)
    assert not torch.allclose(model(idx)[0, 12:], model(changed)[0, 12:], atol=1e-5)


def test_too_long_sequence_is_rejected():
    model = GPT(tiny_config(block_size=8))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_a_few_steps_of_training_lower_the_loss():
    torch.manual_seed(0)
    model = GPT(tiny_config(zero_init=True))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 96, (2, 24))
    first = model(idx[:, :-1], idx[:, 1:]).item()
    for _ in range(20):
        loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


# ----------------------------------------------------------------------------- generation

def greedy_by_recomputation(model, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("overrides", [{}, {"rope": False, "qk_norm": False},
                                       {"n_layer": 4, "n_unique_layers": 2, "value_embeds": 1, "mlp": "swiglu"}])
def test_kv_cache_greedy_generation_equals_full_recomputation(overrides):
    torch.manual_seed(0)
    model = GPT(tiny_config(**overrides)).eval()
    prompts = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12, 13], [4]]  # different lengths in one batch
    generated = model.generate(prompts, 12, temperature=0)
    for prompt, new in zip(prompts, generated):
        assert new == greedy_by_recomputation(model, prompt, 12)


def test_stop_token_ends_a_row_and_is_excluded():
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    prompts = [[1, 2, 3], [7, 8]]
    free = model.generate(prompts, 10, temperature=0)
    stop = free[0][3]
    stopped = model.generate(prompts, 10, temperature=0, stop_token=stop)
    for full, cut in zip(free, stopped):
        expected = full[:full.index(stop)] if stop in full else full
        assert cut == expected


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    prompts = [[1, 2], [3, 4, 5]]
    a = model.generate(prompts, 10, temperature=1.0, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = model.generate(prompts, 10, temperature=1.0, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(7))
    assert a == b
    greedy = model.generate(prompts, 10, temperature=0)
    assert model.generate(prompts, 10, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(1)) == greedy
    limited = model.generate(prompts, 30, temperature=2.0, valid_vocab=10, generator=torch.Generator().manual_seed(2))
    assert all(t < 10 for row in limited for t in row)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    g = torch.Generator().manual_seed(0)
    draws = {int(M.sample_next_token(logits, 1.0, top_p=0.75, generator=g)) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 < 0.75 <= 0.8
    draws = {int(M.sample_next_token(logits, 1.0, top_p=0.5, generator=g)) for _ in range(100)}
    assert draws == {0}
    draws = {int(M.sample_next_token(logits, 1.0, top_k=3, generator=g)) for _ in range(300)}
    assert draws == {0, 1, 2}


def test_generation_in_bfloat16_and_under_autocast():
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # keys arrive in bf16: the cache follows their dtype
        rows = model.generate([[1, 2, 3], [4]], 6, temperature=0)
    assert [len(r) for r in rows] == [6, 6]
    half = model.to(torch.bfloat16)
    assert [len(r) for r in half.generate([[1, 2, 3], [4]], 6, temperature=0)] == [6, 6]


def test_generation_past_block_size_is_rejected():
    model = GPT(tiny_config(block_size=16))
    with pytest.raises(ValueError, match="block_size"):
        model.generate([[1] * 10], 10)


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(n_layer=4, n_unique_layers=2, value_embeds=1, tie_embeddings=True)
    model = GPT(config)
    path = tmp_path / "sub" / "ckpt.pt"
    spec = {"name": "bpe:96", "pattern": "x", "ranks": ["YQ=="], "special_tokens": {"<|endoftext|>": 95}}
    M.save_checkpoint(path, model, config, spec, step=7, hparams={"lr": 0.1})
    assert os.listdir(path.parent) == ["ckpt.pt"]  # no temp file left behind
    ckpt = M.load_checkpoint(path)
    assert ckpt["step"] == 7 and ckpt["tokenizer"] == spec and ckpt["config"] == asdict(config)
    assert ckpt["hparams"] == {"lr": 0.1}
    loaded = M.model_from_checkpoint(ckpt)
    assert loaded.blocks[0] is loaded.blocks[2] and loaded.lm_head.weight is loaded.transformer.wte.weight
    idx = torch.randint(0, 96, (2, 10))
    assert torch.equal(model(idx), loaded(idx))


def test_wrapper_prefixes_are_stripped(tmp_path):
    config = tiny_config()
    model = GPT(config)
    wrapped = nn.Module()
    wrapped.module = nn.Module()
    wrapped.module._orig_mod = model  # what DDP(torch.compile(model)).state_dict() keys look like
    M.save_checkpoint(tmp_path / "a.pt", wrapped, config, {"name": "gpt2"}, 1)
    assert all(not k.startswith(("module.", "_orig_mod.")) for k in M.load_checkpoint(tmp_path / "a.pt")["model"])
    # a checkpoint saved by hand with prefixes also loads
    torch.save({"model": {"_orig_mod." + k: v for k, v in model.state_dict().items()}, "config": asdict(config)},
               tmp_path / "b.pt")
    loaded = M.model_from_checkpoint(M.load_checkpoint(tmp_path / "b.pt"))
    idx = torch.randint(0, 96, (1, 8))
    assert torch.equal(model(idx), loaded(idx))


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        M.load_checkpoint(tmp_path / "missing.pt")
    config = tiny_config()
    M.save_checkpoint(tmp_path / "good.pt", GPT(config), config, {"name": "gpt2"}, 1)
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        M.load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        M.load_checkpoint(tmp_path / "text.pt")
    torch.save({"model": {}, "config": {}, "evil": GPTConfig()}, tmp_path / "pickled.pt")  # not weights-only
    with pytest.raises(ValueError, match="cannot be read"):
        M.load_checkpoint(tmp_path / "pickled.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="'model' and 'config'"):
        M.load_checkpoint(tmp_path / "other.pt")
    ckpt = M.load_checkpoint(tmp_path / "good.pt")
    with pytest.raises(ValueError, match="do not fit"):
        M.model_from_checkpoint({**ckpt, "config": {**ckpt["config"], "n_layer": 4}})
    with pytest.raises(ValueError, match="shape mismatch"):
        M.model_from_checkpoint({**ckpt, "config": {**ckpt["config"], "n_embd": 64}})
    with pytest.raises(ValueError, match="unknown GPTConfig"):
        M.model_from_checkpoint({**ckpt, "config": {**ckpt["config"], "n_experts": 4}})


# ----------------------------------------------------------------------------- devices and CLI

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_bf16_forward_and_generation():
    torch.manual_seed(0)
    model = GPT(tiny_config()).cuda()
    idx = torch.randint(0, 96, (2, 32), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and model.lm_head.weight.grad is not None
    model.eval()
    gen = model.generate([[1, 2], [3]], 8, temperature=0)  # float32: the cache must match recomputation
    assert gen == [greedy_by_recomputation(model, p, 8) for p in ([1, 2], [3])]


@pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no MPS device")
def test_mps_forward():
    model = GPT(tiny_config()).to("mps")
    assert torch.isfinite(model(torch.randint(0, 96, (2, 16), device="mps")).sum())


def test_build_config_overrides_field_by_field():
    config = M.build_config("small", 8000, 512, n_head=16, mlp="swiglu")
    assert (config.n_head, config.n_kv_head, config.mlp, config.vocab_size, config.block_size) == (16, 4, "swiglu",
                                                                                                   8000, 512)
    assert M.build_config(None, 96, 64) == GPTConfig(vocab_size=128, block_size=64)  # GPTConfig's defaults, padded
    with pytest.raises(ValueError, match="unknown preset"):
        M.build_config("huge", 8192, 1024)
    with pytest.raises(ValueError, match="n_experts"):
        M.build_config("tiny", 8192, 1024, n_experts=4)


def test_records_of_older_versions_still_load_their_config():
    old = {**asdict(M.build_config("tiny", 4096, 256)), "use_kernels": True}  # the field became a runtime switch
    assert M.config_from_dict(old) == M.build_config("tiny", 4096, 256)


def test_kernel_switch_is_runtime_and_reaches_every_module():
    model = GPT(tiny_config(), use_kernels=False)
    assert not model.use_kernels and not any(m.use_kernels for m in model.modules() if isinstance(m, (M.Norm, M.MLP)))
    model.use_kernels = True
    assert all(m.use_kernels for m in model.modules() if isinstance(m, (M.Norm, M.MLP)))


def test_fused_head_runs_in_the_autocast_dtype(monkeypatch):
    # autocast does not cast a custom op's inputs: the model hands the head bf16 activations itself,
    # so on a GPU the LM head's matmuls run in bf16, not fp32
    torch.manual_seed(0)
    model = GPT(tiny_config(zero_init=False))
    idx = torch.randint(0, model.config.vocab_size, (2, 8))
    seen = []
    fused = M.kernels.linear_cross_entropy

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return fused(x, *args, **kwargs)

    monkeypatch.setattr(M.kernels, "linear_cross_entropy", spy)
    plain = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(idx, idx)
    assert seen == [torch.float32, torch.bfloat16]
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(plain.item(), rel=2e-2)
