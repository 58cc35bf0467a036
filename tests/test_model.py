"""Tests for model.py: parameter counting by the hackathon rules (detected, not declared), weight classes,
presets, the forward and its losses, KV-cache generation, checkpoints, the CLI."""
import math
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import model as M
from model import GPT, GPTConfig, count_params, weight_class

ROOT = os.path.dirname(M.__file__)


def tiny_config(**overrides):
    base = dict(vocab_size=96, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, block_size=64, zero_init=False)
    return GPTConfig(**{**base, **overrides})


def numel(module):
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- parameter counting

@pytest.mark.parametrize("overrides", [
    {}, {"mlp": "swiglu", "mlp_ratio": 2.5}, {"mlp": "gelu", "norm": "layernorm", "bias": True},
    {"rope": False, "qk_norm": False}, {"n_kv_head": 1}, {"n_kv_head": 4}, {"logit_softcap": 0.0}])
def test_plain_model_counts_every_parameter_once(overrides):
    model = GPT(tiny_config(**overrides))
    counts = count_params(model)
    total = sum(p.numel() for p in model.parameters())
    assert counts["counted"] == counts["unique"] == total  # GQA (n_kv_head < n_head) is not sharing
    wte = model.transformer.wte.weight.numel()
    assert counts["embedding"] == wte + (model.transformer.wpe.weight.numel() if "wpe" in model.transformer else 0)
    assert counts["non_embedding"] == total - counts["embedding"]


def test_tied_embedding_counts_once():
    untied, tied = GPT(tiny_config()), GPT(tiny_config(tie_embeddings=True))
    assert tied.lm_head.weight is tied.transformer.wte.weight
    V, d = 96, 32
    assert count_params(tied)["counted"] == count_params(untied)["counted"] - V * d
    assert count_params(tied)["counted"] == sum(p.numel() for p in tied.parameters())


def test_same_block_object_twice_built_by_hand_counts_twice():
    model = GPT(tiny_config())
    before = count_params(model)["counted"]
    block = model.blocks[0]
    model.blocks[1] = block  # a hand-made reuse, outside the config
    counts = count_params(model)
    assert counts["unique"] == before - numel(block)
    assert counts["counted"] == counts["unique"] + numel(block)
    model.blocks[2] = block  # three applications
    assert count_params(model)["counted"] == count_params(model)["unique"] + 2 * numel(block)


def test_layer_reuse_from_config_counts_each_application():
    model = GPT(tiny_config(n_layer=6, n_unique_layers=2))
    assert model.blocks[0] is model.blocks[2] is model.blocks[4]
    counts = count_params(model)
    block = numel(model.blocks[0])
    assert counts["unique"] == sum(p.numel() for p in model.parameters())
    assert counts["counted"] == counts["unique"] + 4 * block  # 2 unique blocks, each applied 3 times


def test_value_embeddings_used_twice_count_twice():
    config = tiny_config(n_layer=4, value_embeds=2)
    model = GPT(config)
    table = config.vocab_size * config.n_kv_head * config.head_dim
    counts = count_params(model)
    assert counts["counted"] == counts["unique"] + 2 * table  # each table feeds an early and a late layer
    assert counts["embedding"] == config.vocab_size * config.n_embd + 4 * table


class ReusedInsideForward(nn.Module):
    """A block that applies its own MLP twice in one call: module-call hooks would see one call."""

    def __init__(self, block):
        super().__init__()
        self.inner = block

    def forward(self, x, *args):
        x = self.inner(x, *args)
        return x + self.inner.mlp(self.inner.norm2(x))


def test_functional_reuse_inside_a_module_is_detected():
    model = GPT(tiny_config())
    model.blocks[1] = ReusedInsideForward(model.blocks[1])
    counts = count_params(model)
    assert counts["counted"] == counts["unique"] + numel(model.blocks[1].inner.mlp) + numel(model.blocks[1].inner.norm2)


class FusedQKV(nn.Module):
    """One (3d x d) weight split into q, k, v: a single use of the matrix, not three."""

    def __init__(self, d, twice=False, slices=False):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3 * d, d))
        self.twice, self.slices = twice, slices

    def forward(self, x):
        d = x.size(-1)
        if self.slices:
            q, k, v = (F.linear(x, self.w[i * d:(i + 1) * d]) for i in range(3))
        else:
            q, k, v = (F.linear(x, w) for w in self.w.split(d))
        y = q * k + v
        if self.twice:  # the q part used once more: it now contributes twice
            y = y + F.linear(y, self.w[:d]) if self.slices else y + F.linear(y, self.w.split(d)[0])
        return y


@pytest.mark.parametrize("slices", [False, True])
@pytest.mark.parametrize("twice", [False, True])
def test_fused_weights_split_into_parts_count_once_and_reused_parts_count_again(slices, twice):
    d = 8
    module = FusedQKV(d, twice=twice, slices=slices)
    counts = count_params(module_as_model(module, d))
    # conservative rule: the most-used part sets the multiplier of the whole matrix
    assert counts["counted"] - counts["embedding"] == module.w.numel() * (2 if twice else 1)


def module_as_model(module, d):
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, d)
            self.body = module

        def forward(self, idx):
            return self.body(self.emb(idx))
    return Wrapper()


class IndexedTiedLM(nn.Module):
    """An embedding written as w[idx], tied to the output: still one matrix counted once; a second
    output use of it counts again."""

    def __init__(self, twice=False):
        super().__init__()
        self.w = nn.Parameter(torch.randn(11, 6))
        self.twice = twice

    def forward(self, idx):
        h = self.w[idx]
        if self.twice:
            h = h + F.linear(h, self.w).softmax(-1) @ self.w  # the matrix used again as a projection
        return F.linear(h, self.w)


@pytest.mark.parametrize("twice", [False, True])
def test_tied_matrix_written_by_hand(twice):
    counts = count_params(IndexedTiedLM(twice))
    assert counts["counted"] == 66 * (3 if twice else 1) and counts["embedding"] == counts["counted"]


def test_count_on_meta_device_equals_real_count():
    config = tiny_config(n_layer=4, n_unique_layers=2, value_embeds=1, tie_embeddings=True)
    with torch.device("meta"):
        meta_model = GPT(config)
    assert meta_model.lm_head.weight.is_meta
    assert count_params(meta_model) == count_params(GPT(config))


def test_frozen_parameters_do_not_count():
    model = GPT(tiny_config())
    model.blocks[0].mlp.c_fc.weight.requires_grad_(False)
    assert count_params(model)["counted"] == numel(model) - model.blocks[0].mlp.c_fc.weight.numel()


@pytest.mark.parametrize("counted,klass", [
    (0, "small"), (30_000_000, "small"), (30_000_001, "medium"), (60_000_000, "medium"), (60_000_001, "large"),
    (120_000_000, "large"), (120_000_001, "open"), (10 ** 10, "open")])
def test_weight_class_boundaries(counted, klass):
    assert weight_class(counted) == klass


@pytest.mark.parametrize("name,limit", [("small", 30_000_000), ("medium", 60_000_000), ("large", 120_000_000)])
def test_class_presets_land_in_their_class_near_the_limit(name, limit):
    config = M.preset_config(name, 8192, 1024)  # the TinyStories default tokenizer, bpe:8192
    with torch.device("meta"):
        counted = count_params(GPT(config))["counted"]
    assert weight_class(counted) == name
    assert 0.9 * limit <= counted <= limit


def test_other_presets():
    with torch.device("meta"):
        tiny = count_params(GPT(M.preset_config("tiny", 8192, 256)))["counted"]
        gpt2 = M.preset_config("gpt2-124m", 50257, 1024)
        gpt2_counted = count_params(GPT(gpt2))["counted"]
    assert 1_000_000 <= tiny <= 3_000_000
    assert gpt2.vocab_size == 50304 and (gpt2.n_layer, gpt2.n_embd, gpt2.n_head) == (12, 768, 12)
    assert 123_000_000 < gpt2_counted < 125_000_000  # GPT-2 small, tied, RoPE instead of learned positions
    with pytest.raises(ValueError, match="unknown preset"):
        M.preset_config("huge", 8192, 1024)


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
    model.config.use_kernels = False  # one switch, read by every module at call time
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
    with pytest.raises(M.CheckpointError, match="does not exist"):
        M.load_checkpoint(tmp_path / "missing.pt")
    config = tiny_config()
    M.save_checkpoint(tmp_path / "good.pt", GPT(config), config, {"name": "gpt2"}, 1)
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(M.CheckpointError, match="corrupt"):
        M.load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(M.CheckpointError, match="corrupt"):
        M.load_checkpoint(tmp_path / "text.pt")
    torch.save({"model": {}, "config": {}, "evil": GPTConfig()}, tmp_path / "pickled.pt")  # not weights-only
    with pytest.raises(M.CheckpointError, match="cannot be read"):
        M.load_checkpoint(tmp_path / "pickled.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(M.CheckpointError, match="'model' and 'config'"):
        M.load_checkpoint(tmp_path / "other.pt")
    ckpt = M.load_checkpoint(tmp_path / "good.pt")
    with pytest.raises(M.CheckpointError, match="do not fit"):
        M.model_from_checkpoint({**ckpt, "config": {**ckpt["config"], "n_layer": 4}})
    with pytest.raises(M.CheckpointError, match="shape mismatch"):
        M.model_from_checkpoint({**ckpt, "config": {**ckpt["config"], "n_embd": 64}})
    with pytest.raises(M.CheckpointError, match="unknown GPTConfig"):
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


def test_cli(capsys):
    assert M.main(["--preset=small", "--vocab_size=8192"]) == 0
    out = capsys.readouterr().out
    assert "weight class: small" in out.replace("  ", "")
    assert M.main(["--n_layer=x"]) == 2
    assert capsys.readouterr().err.startswith("error: model.py:")
    out = subprocess.run([sys.executable, "model.py", "--bogus=1"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


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
