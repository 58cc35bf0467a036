"""Tests for model.py: configurations and presets, the forward and its losses, the kernel switch, KV-cache
generation, checkpoints."""
import contextlib
import math
import os
from unittest import mock
from dataclasses import asdict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import model as M
from helpers import tiny_config
from model import GPT, GPTConfig



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
    with pytest.raises(ValueError, match="a weights-only load refuses .*GPTConfig.*do not load it"):
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

@pytest.mark.gpu
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


def test_kernel_switch_is_runtime_not_config():
    model = GPT(tiny_config(), use_kernels=False)
    assert not model.use_kernels and "use_kernels" not in asdict(model.config)
    model.use_kernels = True
    assert model.use_kernels


def test_fused_head_runs_in_the_autocast_dtype(monkeypatch):
    # autocast does not cast a custom op's inputs: the model hands the head bf16 activations itself,
    # so on a GPU the LM head's matmuls run in bf16, not fp32
    torch.manual_seed(0)
    model = GPT(tiny_config(zero_init=False))
    idx = torch.randint(0, model.config.vocab_size, (2, 8))
    seen = []
    fused = M.linear_cross_entropy

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return fused(x, *args, **kwargs)

    monkeypatch.setattr(M, "linear_cross_entropy", spy)
    plain = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(idx, idx)
    assert seen == [torch.float32, torch.bfloat16]
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(plain.item(), rel=2e-2)


# ----------------------------------------------------------------------------- attention masks and skip connections

DELIM = 95
ALL_SWITCHES = dict(doc_mask=True, delimiter_id=DELIM, window=8, short_window=4, window_pattern="LSSL",
                    x0_mix=True, value_residual=True, unet=True, bigram_vocab=97)
NEW_PARAMS = ("resid_lambdas", "x0_lambdas", "v_lambdas", "skip_weights")


def test_new_switches_are_off_by_default_and_the_gpu_presets_carry_the_skips():
    for name, config in [("default", GPTConfig())] + [(name, M.build_config(name, 8192, 256)) for name in M.PRESETS]:
        assert (config.doc_mask, config.delimiter_id, config.window, config.short_window) == (False, -1, 0, 0)
        assert not config.attention_masked and config.bigram_vocab == 0 and config.dropout == 0
        gpu_preset = name not in ("default", "tiny")
        assert (config.x0_mix, config.value_residual, config.unet) == (gpu_preset,) * 3, name
    model = GPT(tiny_config())
    assert not any(hasattr(model, name) for name in NEW_PARAMS)
    assert model.attention_masks(torch.zeros(1, 8, dtype=torch.long)) is None  # the plain is_causal path


def test_bad_attention_configs_are_rejected():
    with pytest.raises(ValueError, match="set delimiter_id"):
        tiny_config(doc_mask=True)
    with pytest.raises(ValueError, match="delimiter_id must be"):
        tiny_config(delimiter_id=96)
    with pytest.raises(ValueError, match="window"):
        tiny_config(window=-1)
    with pytest.raises(ValueError, match="window_pattern"):
        tiny_config(window_pattern="LXS")
    with pytest.raises(ValueError, match="n_layer >= 2"):
        tiny_config(n_layer=1, unet=True)


def test_layer_window_pattern_repeats_over_the_layers():
    assert tiny_config(n_layer=6, window=8).layer_windows == ["L"] * 6  # no short window: all long
    assert tiny_config(n_layer=6, short_window=4, window_pattern="LSSL").layer_windows == list("LSSLLS")
    assert tiny_config(n_layer=3, short_window=4, window_pattern="SSL").layer_windows == list("SSL")
    assert not tiny_config(window_pattern="S").attention_masked  # the pattern alone changes nothing


def documents_batch():
    """Two rows with different document layouts: delimiters at 0, 9, 20 and at 0, 5, 30."""
    torch.manual_seed(1)
    idx = torch.randint(0, DELIM, (2, 40))
    idx[0, [0, 9, 20]] = DELIM
    idx[1, [0, 5, 30]] = DELIM
    return idx


@pytest.mark.parametrize("overrides", [dict(doc_mask=True, delimiter_id=DELIM), ALL_SWITCHES,
                                       dict(ALL_SWITCHES, rope=False, n_kv_head=4, value_embeds=1)])
def test_document_mask_a_token_never_sees_other_documents(overrides):
    torch.manual_seed(0)
    model = GPT(tiny_config(**overrides))
    idx = documents_batch()
    changed = idx.clone()
    changed[0, 1:9] = (changed[0, 1:9] + 1) % DELIM     # row 0: the document before (inside any window)
    changed[0, 21:] = (changed[0, 21:] + 1) % DELIM     # ... and the one after
    changed[1, 6:30] = (changed[1, 6:30] + 1) % DELIM   # row 1: the middle document
    before, after = model(idx), model(changed)
    assert torch.allclose(before[0, 9:20], after[0, 9:20], atol=1e-5)   # doc [9, 20) of row 0 unchanged
    assert torch.allclose(before[1, :5], after[1, :5], atol=1e-5)       # docs [0, 5) and [30, 40) of row 1
    assert torch.allclose(before[1, 30:], after[1, 30:], atol=1e-5)
    assert not torch.allclose(before[0, 21:], after[0, 21:], atol=1e-5)  # the changed tokens themselves do
    inside = idx.clone()
    inside[0, 12] = (inside[0, 12] + 1) % DELIM        # a change inside the document reaches its later tokens
    out = model(inside)
    assert torch.allclose(before[0, :12], out[0, :12], atol=1e-5)
    assert not torch.allclose(before[0, 13:20], out[0, 13:20], atol=1e-5)


def test_without_document_mask_other_documents_are_seen():
    torch.manual_seed(0)
    model = GPT(tiny_config())
    idx = documents_batch()
    changed = idx.clone()
    changed[0, 1:9] = (changed[0, 1:9] + 1) % DELIM
    assert not torch.allclose(model(idx)[0, 9:20], model(changed)[0, 9:20], atol=1e-5)  # the test above can fail


def test_sliding_window_a_token_never_sees_beyond_its_window():
    torch.manual_seed(0)
    model = GPT(tiny_config(n_layer=1, window=5))  # one layer: the window is the whole receptive field
    idx = torch.randint(0, 96, (1, 30))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 96
    before, after = model(idx)[0], model(changed)[0]
    assert torch.allclose(before[15:], after[15:], atol=1e-5)  # 15 - 10 = 5: outside the window (i - j < 5)
    for i in range(10, 15):                                    # inside it, the change is seen
        assert not torch.allclose(before[i], after[i], atol=1e-5)
    assert torch.allclose(before[:10], after[:10], atol=1e-5)  # causal


@pytest.mark.parametrize("overrides", [{}, dict(x0_mix=True, value_residual=True, unet=True)])
def test_long_short_windows_stack_to_the_receptive_field(overrides):
    # layers L S S L with windows 6 and 3 reach back 5 + 2 + 2 + 5 = 14 tokens; skips add no reach
    torch.manual_seed(0)
    model = GPT(tiny_config(n_layer=4, window=6, short_window=3, window_pattern="LSSL", **overrides))
    idx = torch.randint(0, 96, (1, 40))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 96
    before, after = model(idx)[0], model(changed)[0]
    assert torch.allclose(before[25:], after[25:], atol=1e-5)
    assert not torch.allclose(before[24], after[24], atol=1e-6)
    model.set_windows(short=6)  # every layer long now: reach 20
    assert not torch.allclose(model(idx)[0, 30], model(changed)[0, 30], atol=1e-6)
    assert torch.allclose(model(idx)[0, 31:], model(changed)[0, 31:], atol=1e-5)


def test_set_windows_equals_a_config_with_those_windows_and_resets():
    torch.manual_seed(0)
    model = GPT(tiny_config(**ALL_SWITCHES))
    smaller = GPT(tiny_config(**{**ALL_SWITCHES, "window": 3, "short_window": 2}))
    smaller.load_state_dict(model.state_dict())
    idx = documents_batch()
    full = model(idx)
    model.set_windows(3, 2)
    assert model.windows == (3, 2)
    assert torch.allclose(model(idx), smaller(idx), atol=1e-6)
    model.set_windows(0)  # 0 = full for the long layers; None (short) = the config's
    assert model.windows == (64, 4)
    model.set_windows()   # back to the config's
    assert model.windows == (8, 4) and torch.allclose(model(idx), full, atol=1e-6)
    assert "attn_windows" not in model.state_dict()  # a runtime setting, not saved
    with pytest.raises(ValueError, match="plain causal"):
        GPT(tiny_config()).set_windows(4)
    with pytest.raises(ValueError, match=">= 0"):
        model.set_windows(-1)


@pytest.mark.skipif(M.flex_attention is None, reason="no FlexAttention in this PyTorch")
@pytest.mark.filterwarnings("ignore::UserWarning")  # flex_attention warns that it runs uncompiled here
@pytest.mark.parametrize("overrides", [ALL_SWITCHES, dict(window=7), dict(doc_mask=True, delimiter_id=DELIM)])
def test_flex_attention_path_equals_the_sdpa_mask_path(overrides):
    # on CPU flex_attention runs eagerly (no backward), enough to check that both paths mask alike
    torch.manual_seed(0)
    model = GPT(tiny_config(**overrides))
    idx = documents_batch()
    with torch.no_grad():
        dense = model(idx)
        model.attention_impl = "flex"
        masks = model.attention_masks(idx)
        assert all(isinstance(m, M.BlockMask) for m in masks.values())
        assert torch.allclose(model(idx), dense, atol=1e-5)
    model.attention_impl = "sdpa"
    assert all(m.dtype == torch.bool for m in model.attention_masks(idx).values())
    model.attention_impl = "fast"
    with pytest.raises(ValueError, match="attention_impl"):
        model(idx)


@pytest.mark.parametrize("gqa", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_explicit_attention_equals_sdpa_forward_and_backward(gqa, masked):
    """The CPU bf16 path (scores written out) against SDPA, in float64 so the two differ only by rounding."""
    torch.manual_seed(0)
    B, H, T, D = 2, 4, 12, 8
    q = torch.randn(B, H, T, D, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(B, 2 if gqa else H, T, D, dtype=torch.float64, requires_grad=True) for _ in range(2))
    pos = torch.arange(T)
    docs = torch.tensor([[0] * 5 + [1] * 7, [0] * 9 + [1] * 3])
    mask = M.attention_mask(pos, pos, 4, docs, docs) if masked else None
    ours = M.explicit_attention(q, k, v, mask)
    reference = (F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa) if masked else
                 F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa))
    torch.testing.assert_close(ours, reference)
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    for got, want in zip(grads, torch.autograd.grad(reference.square().sum(), (q, k, v))):
        torch.testing.assert_close(got, want)


def test_cpu_bf16_model_takes_the_explicit_path_and_agrees_with_fp32(monkeypatch):
    torch.manual_seed(0)
    model = GPT(tiny_config(**ALL_SWITCHES))
    idx = documents_batch()
    calls = []
    real = M.explicit_attention
    monkeypatch.setattr(M, "explicit_attention", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        fp32 = model(idx)
        assert not calls
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(idx)
    assert len(calls) == model.config.n_layer
    assert (bf16 - fp32).abs().max() < 0.1 and (bf16 - fp32).abs().mean() < 0.02


def test_dense_mask_rule():
    pos = torch.arange(6)
    docs = torch.tensor([[1, 1, 2, 2, 2, 3]])
    mask = M.attention_mask(pos, pos, 2, docs, docs)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [0, 0, 1, 0, 0, 0],
                             [0, 0, 1, 1, 0, 0],
                             [0, 0, 0, 1, 1, 0],
                             [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert torch.equal(M.document_ids(torch.tensor([[5, 1, 5, 2]]), 5), torch.tensor([[1, 1, 2, 2]]))


def test_skip_connections_start_as_documented_and_learn():
    torch.manual_seed(0)
    plain = GPT(tiny_config())
    mixed = GPT(tiny_config(x0_mix=True))
    mixed.load_state_dict(plain.state_dict(), strict=False)
    idx = torch.randint(0, 96, (2, 16))
    assert torch.allclose(plain(idx), mixed(idx), atol=1e-6)  # a = 1, b = 0: x0 mixing starts as a no-op
    model = GPT(tiny_config(n_layer=5, **ALL_SWITCHES))
    assert model.resid_lambdas.shape == model.x0_lambdas.shape == (5,)
    assert model.v_lambdas.shape == (4,) and model.skip_weights.shape == (2,)
    assert all(getattr(model, name).ndim == 1 for name in NEW_PARAMS)  # train.py's "scalar" group (AdamW)
    model(idx, idx).backward()
    for name in NEW_PARAMS:
        grad = getattr(model, name).grad
        assert grad is not None and (grad != 0).all(), name  # every scalar takes part


def test_bigram_embedding_hashes_previous_and_current_token_and_starts_as_a_no_op():
    idx = torch.tensor([[5, 7, 5, 7, 7, 5]])
    ids = M.bigram_ids(idx, None, 1009)
    assert ids[0, 0] == 0 and (ids[0, 1:] >= 1).all() and (ids < 1009).all()  # row 0: no previous token
    assert ids[0, 1] == ids[0, 3] and ids[0, 2] == ids[0, 5]  # the same pair, the same row
    assert ids[0, 1] != ids[0, 2] and ids[0, 4] != ids[0, 1]  # (5, 7), (7, 5), (7, 7) differ here
    # an explicit prev (generation) gives the same rows as the shift; -1 means none
    prev = torch.tensor([[-1, 5, 7, 5, 7, 7]])
    assert torch.equal(M.bigram_ids(idx, prev, 1009), ids)
    assert (M.bigram_ids(idx, None, 1009, doc_start=5)[idx == 5] == 0).all()  # a document's opening token
    torch.manual_seed(0)
    plain = GPT(tiny_config(zero_init=True))
    bigram = GPT(tiny_config(zero_init=True, bigram_vocab=64))
    bigram.load_state_dict(plain.state_dict(), strict=False)
    tokens = torch.randint(0, 96, (2, 16))
    assert torch.allclose(plain(tokens), bigram(tokens), atol=1e-6)  # zero-initialised table
    learning = GPT(tiny_config(bigram_vocab=64))  # zero_init=False: a gradient reaches the table at once
    learning(tokens, tokens).backward()
    assert learning.bigram_embed.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="bigram_vocab"):
        tiny_config(bigram_vocab=1)


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    plain = GPT(tiny_config())
    dropped = GPT(tiny_config(dropout=0.2))
    dropped.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 96, (2, 16))
    plain.eval(), dropped.eval()
    assert torch.equal(plain(idx), dropped(idx))  # eval (eval_bpb, generation): no dropout
    dropped.train()
    assert not torch.allclose(plain(idx), dropped(idx))
    with pytest.raises(ValueError, match="dropout must be in"):
        tiny_config(dropout=1.0)


def test_u_net_skip_pairs_encoder_and_decoder_layers(monkeypatch):
    # 5 layers: outputs of layers 0, 1 go to the inputs of layers 4, 3; the middle layer 2 gets none
    torch.manual_seed(0)
    model = GPT(tiny_config(n_layer=5, unet=True))
    seen = {}
    for i, block in enumerate(model.blocks):
        def spy(x, *args, _i=i, _f=block.forward):
            seen[_i] = x
            out = _f(x, *args)
            seen[f"out{_i}"] = out[0]
            return out
        monkeypatch.setattr(block, "forward", spy)
    with torch.no_grad():
        model.skip_weights.copy_(torch.tensor([2.0, 3.0]))
        model(torch.randint(0, 96, (1, 8)))
    assert torch.allclose(seen[2], seen["out1"])
    assert torch.allclose(seen[3], seen["out2"] + 2.0 * seen["out1"])  # skip_weights[j]: the j-th decoder layer
    assert torch.allclose(seen[4], seen["out3"] + 3.0 * seen["out0"])


@pytest.mark.parametrize("overrides", [ALL_SWITCHES, dict(ALL_SWITCHES, window=0, short_window=0),
                                       dict(window=5, short_window=2, window_pattern="SL"),
                                       dict(ALL_SWITCHES, n_unique_layers=1, value_embeds=1, n_kv_head=4)])
def test_kv_cache_generation_with_masks_equals_full_recomputation(overrides):
    # document boundaries inside the prompts, windows shorter than the prompts, left padding
    torch.manual_seed(0)
    model = GPT(tiny_config(**overrides)).eval()
    prompts = [[DELIM, 1, 2, 3, DELIM, 4, 5], [5, 6, 7, 8, 9, DELIM, 10, 11, 12, 13, DELIM, DELIM, 14], [4]]
    generated = model.generate(prompts, 14, temperature=0)
    for prompt, new in zip(prompts, generated):
        assert new == greedy_by_recomputation(model, prompt, 14)
    model.set_windows(3, 1)  # generation follows the current windows too
    generated = model.generate(prompts, 10, temperature=0)
    for prompt, new in zip(prompts, generated):
        assert new == greedy_by_recomputation(model, prompt, 10)


def test_generation_sees_a_generated_delimiter_as_a_document_start(monkeypatch):
    # force the sampled tokens (delimiters among them) and compare every step's logits with a full forward
    torch.manual_seed(0)
    model = GPT(tiny_config(**ALL_SWITCHES)).eval()
    forced = [7, DELIM, 8, 9, DELIM, DELIM, 10, 11]
    seen = []

    def sampler(logits, *args, **kwargs):
        seen.append(logits.clone())
        return torch.full((logits.size(0),), forced[len(seen) - 1], dtype=torch.long)

    monkeypatch.setattr(M, "sample_next_token", sampler)
    prompts = [[1, 2, DELIM, 3], [DELIM, 7]]
    model.generate(prompts, len(forced), temperature=0)
    for step, logits in enumerate(seen):
        for b, prompt in enumerate(prompts):
            full = model(torch.tensor([prompt + forced[:step]]))[0, -1]
            assert torch.allclose(logits[b], full, atol=1e-4), (step, b)


def test_forward_with_every_switch_compiles_as_one_graph_and_windows_never_recompile():
    from torch._dynamo.testing import CompileCounterWithBackend
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = GPT(tiny_config(**ALL_SWITCHES, value_embeds=1))
    counter = CompileCounterWithBackend("aot_eager")  # graph capture and autograd tracing, no C++ compile
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    idx = documents_batch()
    loss = compiled(idx, idx)
    loss.backward()
    assert torch.allclose(loss, model(idx, idx), atol=1e-5)
    for long, short in ((3, 2), (5, 3), (0, 7)):  # a window warm-up: new sizes, the same graph
        model.set_windows(long, short)
        assert torch.allclose(compiled(idx, idx), model(idx, idx), atol=1e-5)
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_checkpoint_round_trip_with_every_switch(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(**ALL_SWITCHES)
    model = GPT(config)
    M.save_checkpoint(tmp_path / "c.pt", model, config, {"name": "gpt2"}, 1)
    ckpt = M.load_checkpoint(tmp_path / "c.pt")
    assert ckpt["config"]["delimiter_id"] == DELIM and ckpt["config"]["doc_mask"]  # eval_bpb sees the same masks
    loaded = M.model_from_checkpoint(ckpt)
    idx = documents_batch()
    assert torch.equal(model(idx), loaded(idx))


def test_residual_stream_in_the_autocast_dtype_with_fp32_weights():
    """Under bf16 autocast (training on CUDA) the residual stream is bf16; weights and their gradients stay fp32."""
    model = GPT(tiny_config(x0_mix=True, unet=True, value_residual=True))
    seen = []
    for block in set(model.blocks):
        block.register_forward_hook(lambda module, inputs, output: seen.append(output[0].dtype))
    idx = torch.randint(0, 96, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(idx, idx)
    loss.backward()
    assert set(seen) == {torch.bfloat16} and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters()
               if p.grad is not None)
    plain = GPT(tiny_config(x0_mix=True, unet=True, value_residual=True))
    plain.load_state_dict(model.state_dict())
    assert loss.item() == pytest.approx(plain(idx, idx).item(), rel=3e-2)


# ----------------------------------------------------------------------------- CUDA dtypes, checked on a CPU
# FakeTensorMode runs the model on tensors of a fake "cuda" device: shapes and dtypes only, through CUDA's
# autocast rules (which differ from the CPU's: CUDA autocast runs rms_norm and layer_norm in fp32).


def _fake_cuda_getitem(self, index):
    """Basic indexing (ints, slices, None, ...) through aten ops: a CPU build cannot set the CUDA device guard
    that Python indexing sets, so fake CUDA tensors take select/narrow/unsqueeze but not t[i]."""
    index = index if isinstance(index, tuple) else (index,)
    if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in index):
        raise NotImplementedError(f"fake CUDA indexing with {index!r}")
    out, dim = self, 0
    for i in index:
        if i is Ellipsis:
            dim += self.dim() - sum(1 for j in index if j is not None and j is not Ellipsis)
        elif i is None:
            out, dim = out.unsqueeze(dim), dim + 1
        elif isinstance(i, int):
            out = out.select(dim, i)
        else:
            start, stop, step = i.indices(out.size(dim))
            out, dim = torch.ops.aten.slice(out, dim, start, max(start, stop), step), dim + 1
    return out


@contextlib.contextmanager
def fake_cuda(autocast=torch.bfloat16):
    """Fake CUDA tensors under CUDA autocast (no grad: autograd would set the device guard too)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with mock.patch("torch.cuda.is_available", return_value=True), \
            mock.patch("torch.cuda.is_bf16_supported", return_value=True):
        cast = torch.autocast("cuda", autocast, cache_enabled=False)  # the weight cache sets a device guard
    with FakeTensorMode(allow_non_fake_inputs=True), mock.patch.object(torch.Tensor, "__getitem__", _fake_cuda_getitem), \
            torch.no_grad(), cast:
        yield


def meta_model(config):
    """A GPT on the meta device, to be moved to the fake CUDA device inside fake_cuda (model.to_empty), with
    SDPA masks (flex needs a real GPU to compile) and without the fused head (whose Triton path needs one)."""
    with torch.device("meta"):
        model = GPT(config, use_kernels=False)
    model.attention_impl = "sdpa"
    return model


@pytest.mark.parametrize("overrides", [
    {},                                                                   # the small preset: RMSNorm, QK-norm, skips
    dict(norm="layernorm", bias=True),
    dict(value_embeds=2, window=32, short_window=16, doc_mask=True, delimiter_id=0),  # masked configs, flex's inputs
])
def test_cuda_autocast_keeps_norms_q_k_v_and_the_residual_stream_in_bf16(overrides):
    """Under CUDA autocast every norm, the residual stream and q, k, v reach attention in bf16 (flex_attention
    refuses mixed dtypes; fp32 norms would double the stream's traffic). A CPU cannot see this with CPU
    autocast, whose rules differ."""
    config = M.build_config("small", 512, 64, n_layer=4, **overrides)
    seen = {"attend": [], "norm": [], "block": []}
    attend = M._attend

    def spy(q, k, v, mask, gqa):
        seen["attend"].append((q.dtype, k.dtype, v.dtype))
        return attend(q, k, v, mask, gqa)

    model = meta_model(config)
    with fake_cuda(), mock.patch.object(M, "_attend", spy):
        model = model.to_empty(device="cuda")
        for module in model.modules():
            if isinstance(module, M.Norm):
                module.register_forward_hook(lambda m, i, out: seen["norm"].append(out.dtype))
            if isinstance(module, M.Block):
                module.register_forward_hook(lambda m, i, out: seen["block"].append(out[0].dtype))
        idx = torch.zeros(2, 64, dtype=torch.long, device="cuda")
        assert idx.device.type == "cuda" and torch.is_autocast_enabled("cuda")
        logits = model(idx)
    bf16 = torch.bfloat16
    assert seen["attend"] == [(bf16, bf16, bf16)] * 4
    assert set(seen["norm"]) == {bf16} and len(seen["norm"]) == 4 * 4 + 1  # 2 per block, q and k, and ln_f
    assert seen["block"] == [bf16] * 4 and logits.dtype == torch.float32


def test_masked_gqa_attention_on_cuda_repeats_the_kv_heads():
    """SDPA on CUDA takes enable_gqa only in its flash and math kernels, and flash takes no mask: with a mask
    the k/v heads are repeated first, so the memory-efficient kernel can run (not math's B x H x T x T)."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append((k.size(1), v.size(1), kwargs.get("enable_gqa", False), kwargs.get("attn_mask") is not None))
        return sdpa(q, k, v, **kwargs)

    with fake_cuda(), mock.patch.object(F, "scaled_dot_product_attention", spy):
        q = torch.empty(2, 8, 16, 32, device="cuda", dtype=torch.bfloat16)
        k = v = torch.empty(2, 2, 16, 32, device="cuda", dtype=torch.bfloat16)
        mask = torch.empty(2, 1, 16, 16, device="cuda", dtype=torch.bool)
        assert M._attend(q, k, v, mask, gqa=True).shape == q.shape
        assert M._attend(q, k, v, None, gqa=True).shape == q.shape  # causal: flash takes GQA, untouched
    assert calls == [(8, 8, False, True), (2, 2, True, False)]
    # on a CPU, SDPA's own GQA stays, and the repeated heads are the grouping enable_gqa uses
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 8, 16, 32), torch.randn(2, 2, 16, 32), torch.randn(2, 2, 16, 32)
    mask = M.attention_mask(torch.arange(16), torch.arange(16), 5)
    want = sdpa(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(sdpa(q, *M.repeat_kv_heads(k, v, 8), attn_mask=mask), want)
    torch.testing.assert_close(M._attend(q, k, v, mask, gqa=True), want)


def test_flex_attention_is_chosen_only_where_triton_runs(monkeypatch):
    """attention_impl "auto": flex_attention on a GPU Triton compiles for, the dense masks path elsewhere
    (a GPU below compute capability 7.0, Triton missing, MPS, CPU)."""
    model = GPT(tiny_config(window=8))
    idx = torch.zeros(1, 16, dtype=torch.long)
    monkeypatch.setattr(M, "triton_supports", lambda device: False)
    assert not M.flex_runs_on(torch.device("cuda"))
    assert all(m.dtype == torch.bool for m in model.attention_masks(idx).values())
    monkeypatch.setattr(M, "triton_supports", lambda device: True)
    assert M.flex_runs_on(torch.device("cuda")) == (M.flex_attention is not None)
