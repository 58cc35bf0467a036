"""Tests for flops.py: Marin's convention term by term, the published 130M example, agreement with
torch.utils.flop_counter on a real forward+backward, device peaks, hardware FLOPs and MFU, the CLI; parameter counting by the hackathon rules (detected, not declared) and weight classes."""
import math
import resource
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import flops
import model as M
from helpers import ROOT, tiny_config
from flops import count_params, weight_class
from model import GPT, GPTConfig



def marin_130m():
    # Marin's llama 130M example: hidden 512, intermediate 1792, 6 layers, 8 heads, seq 4096, vocab 128,256, GLU
    return GPTConfig(vocab_size=128256, n_embd=512, mlp="swiglu", mlp_ratio=1792 / 512, n_layer=6, n_head=8,
                     n_kv_head=8, block_size=4096, tie_embeddings=False)


def test_marin_130m_example_is_reproduced():
    config = marin_130m()
    assert config.d_ff == 1792
    assert flops.forward_flops_per_token(config, 4096) == 227_868_672
    assert flops.forward_flops_per_token(asdict(config), 4096) == 227_868_672  # records store the dict


def test_terms_written_out_by_hand_for_a_gqa_relu2_model():
    c = GPTConfig(vocab_size=1000, n_layer=3, n_head=6, n_kv_head=2, n_embd=96, mlp="relu2", mlp_ratio=4.0)
    S, d, h, kv, hd, L = 200, 96, 6, 2, 16, 3
    t = flops.forward_flops_terms(c, S)
    assert t == {"qkv": L * 2 * d * (h * hd + 2 * kv * hd), "attn_out": L * 2 * d * d,
                 "mlp": L * 2 * 2 * d * 384, "attn_scores": L * 2 * S * h * hd, "attn_softmax": L * 3 * S * h,
                 "attn_values": L * 2 * S * h * hd, "lm_head": 2 * d * 1000}
    assert flops.forward_flops_per_token(c, S) == sum(t.values())
    attention = t["attn_scores"] + t["attn_softmax"] + t["attn_values"]
    assert flops.causal_forward_flops_per_token(c, S) == sum(t.values()) - attention // 2
    assert flops.model_flops(c, S, 12345) == 3 * sum(t.values()) * 12345


def test_layer_reuse_costs_flops_and_value_embeddings_are_free():
    base = GPTConfig(vocab_size=512, n_layer=4, n_head=2, n_kv_head=2, n_embd=64)
    reused = GPTConfig(**{**asdict(base), "n_unique_layers": 1, "value_embeds": 2})
    assert flops.forward_flops_per_token(reused, 128) == flops.forward_flops_per_token(base, 128)
    glu = GPTConfig(**{**asdict(base), "mlp": "swiglu"})
    assert flops.forward_flops_terms(glu, 128)["mlp"] == 3 * flops.forward_flops_terms(base, 128)["mlp"] // 2


SHAPES = [
    dict(vocab_size=256, n_layer=2, n_head=4, n_kv_head=4, n_embd=64, mlp="relu2", block_size=64),
    dict(vocab_size=320, n_layer=3, n_head=4, n_kv_head=2, n_embd=64, mlp="swiglu", mlp_ratio=2.5,
         tie_embeddings=True, block_size=96),
    dict(vocab_size=192, n_layer=4, n_head=2, n_kv_head=1, n_embd=32, mlp="gelu", n_unique_layers=2,
         value_embeds=1, qk_norm=False, block_size=128),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_training_flops_agree_with_torch_flop_counter(shape):
    config = GPTConfig(**shape)
    torch.manual_seed(0)
    model = GPT(config, use_kernels=False)
    B, S = 2, config.block_size
    idx = torch.randint(0, config.vocab_size, (B, S))
    counter = FlopCounterMode(display=False)
    # the math backend runs attention as visible matmuls over the full S x S map, as Marin counts it
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(idx, idx).backward()
    measured_per_token = counter.get_total_flops() / (B * S)
    # the counter counts matmuls only: everything but the softmax term
    t = flops.forward_flops_terms(config, S)
    expected = 3 * (flops.forward_flops_per_token(config, S) - t["attn_softmax"])
    assert measured_per_token == pytest.approx(expected, rel=0.02)


def test_peak_table_is_marins():
    assert flops.PEAK_BF16_FLOPS == {
        "H100 SXM": 989.5e12, "H100 PCIe": 756.5e12, "H200": 989.5e12, "A100": 312e12, "L4": 121e12,
        "L40S": 366.5e12, "A10": 125e12, "B200": 2.5e15, "MI300X": 1307.4e12, "TPU v4": 275e12,
        "TPU v5p": 459e12, "TPU v6e": 918e12}


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989.5e12), ("NVIDIA H100 PCIe", 756.5e12), ("NVIDIA H200", 989.5e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA L40S", 366.5e12),
    ("NVIDIA L4", 121e12), ("NVIDIA A10", 125e12), ("NVIDIA B200", 2.5e15), ("AMD Instinct MI300X", 1307.4e12),
    ("H100 SXM", 989.5e12), ("TPU v5p", 459e12),
    ("NVIDIA A10G", None), ("NVIDIA H100 NVL", None), ("NVIDIA GeForce RTX 4090", None), ("cpu", None),
    # train.py's CPU names: a Xeon "v4" is no TPU v4, an "A10" in a model name no GPU
    ("cpu: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz (2 threads per process)", None), ("cpu: A10 (1 threads per process)", None)])
def test_device_names_map_to_datasheet_peaks(name, peak):
    assert flops.device_peak_flops(name) == ((peak, "datasheet") if peak else (None, "unknown"))


@pytest.mark.parametrize("name, bf16, tf32", [
    ("NVIDIA GH200 480GB", 989.5e12, 494.7e12),   # Grace Hopper: an H100 GPU beside the Grace CPU
    ("NVIDIA H200", 989.5e12, 494.7e12), ("NVIDIA H100 80GB HBM3", 989.5e12, 494.7e12),
    ("NVIDIA A100-SXM4-80GB", 312e12, 156e12), ("NVIDIA L4", 121e12, 60e12),
    ("NVIDIA B200", 2.5e15, None), ("AMD Instinct MI300X", 1307.4e12, None),  # no TF32 figure: measured
    ("NVIDIA H200 NVL", None, None), ("Tesla T4", None, None)])
def test_fp32_runs_get_the_tf32_peak_and_gh200_is_known(name, bf16, tf32):
    known = lambda peak: (peak, "datasheet") if peak else (None, "unknown")
    assert flops.device_peak_flops(name, torch.bfloat16) == known(bf16) == flops.device_peak_flops(name)
    assert flops.device_peak_flops(name, torch.float32) == known(tf32) == flops.device_peak_flops(name, None)


def test_tf32_peaks_are_half_the_bf16_ones():
    """NVIDIA's tensor cores run TF32 at half their bf16 rate on every part in the table (the datasheets'
    dense figures, rounded as printed: L4 120 vs 242 TFLOPS with sparsity)."""
    for key, tf32 in flops.PEAK_TF32_FLOPS.items():
        assert tf32 == pytest.approx(flops.PEAK_BF16_FLOPS[key] / 2, rel=0.01), key


def test_cpu_without_name_is_unknown_and_measured_peak_is_plausible():
    if not torch.cuda.is_available():
        assert flops.device_peak_flops() == (None, "unknown")
    measured = flops.measure_matmul_peak("cpu", seconds=0.2)
    assert 1e8 < measured < 1e14 and math.isfinite(measured)


def test_hardware_flops_and_mfu():
    hw = flops.hardware_flops(3600.0, 8, 989.5e12)
    assert hw == 3600.0 * 8 * 989.5e12
    mf = flops.model_flops(M.build_config("small", 8192, 1024), 1024, 10 ** 9)
    assert flops.mfu(mf, hw) == pytest.approx(mf / (3600 * 8 * 989.5e12))


def run_flops_py(*args):
    return subprocess.run([sys.executable, "flops.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_presets_table():
    out = run_flops_py()  # the real command line, as the README shows it
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "preset" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["small", "medium", "large"]
    for row, name in zip(rows, ["small", "medium", "large"]):
        cells = [c.strip() for c in row.split("|")]
        assert cells[6] == name  # each preset lands in its own class
        assert int(cells[7].replace(",", "")) == flops.forward_flops_per_token(M.build_config(name, 8192, 1024), 1024)


def test_cli_single_model_table(capsys):
    assert flops.main(["--preset=small", "--tokens=1e9", "--device=H100 SXM", "--mfu=0.5"]) == 0
    out = capsys.readouterr().out
    assert "weight class" in out and "small" in out
    expected_seconds = flops.model_flops(M.build_config("small", 8192, 1024), 1024, 10 ** 9) / (989.5e12 * 0.5)
    assert f"{expected_seconds / 60:.1f} min" in out
    assert flops.main(["--preset=small", "--device=NVIDIA GeForce RTX 4090"]) == 0
    assert "no datasheet peak" in capsys.readouterr().out


def test_cli_reproduces_marin_example(capsys):
    assert flops.main(["--vocab_size=128256", "--n_embd=512", "--mlp=swiglu", "--mlp_ratio=3.5", "--n_layer=6",
                       "--n_head=8", "--n_kv_head=8", "--block_size=4096"]) == 0
    assert "227,868,672" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--n_layer=abc"], ["--nope=1"], ["--preset=huge"], ["--mfu=2"], ["stray"],
                                  ["--n_embd=100", "--n_head=3"], ["--tie_embeddings=maybe"]])
def test_cli_bad_input_is_one_error_line(args, capsys):
    assert flops.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: flops.py:") and err.count("\n") == 1


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


DEEP_CHAIN = """
import torch
import model as M
from flops import count_params
config = M.build_config(None, 256, 16, n_layer=200, n_embd=16, n_head=2, n_kv_head=1, x0_mix=False,
                        value_residual=False, unet=False)
with torch.device("meta"):
    model = M.GPT(config)
counts = count_params(model)
print(counts["counted"], counts["unique"], sum(p.numel() for p in model.parameters()))
"""


def test_a_deep_plain_chain_is_counted_without_a_crash():
    # the graph of a plain chain is as deep as the model; freed at once it overflowed the C stack (train.py's
    # --n_layer=1000 record made leaderboard.py segfault). A 1 MB stack (1/8 of the usual) makes 200 layers enough.
    small_stack = lambda: resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, resource.getrlimit(resource.RLIMIT_STACK)[1]))
    out = subprocess.run([sys.executable, "-c", DEEP_CHAIN], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         preexec_fn=small_stack)
    assert out.returncode == 0, out.stderr[-2000:]
    counted, unique, total = map(int, out.stdout.split())
    assert counted == unique == total  # a plain model: every weight once


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
        x, values = self.inner(x, *args)
        return x + self.inner.mlp(self.inner.norm2(x)), values


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
    config = M.build_config(name, 8192, 1024)  # the TinyStories default tokenizer, bpe:8192
    with torch.device("meta"):
        counted = count_params(GPT(config))["counted"]
    assert weight_class(counted) == name
    assert 0.9 * limit <= counted <= limit


def test_other_presets():
    with torch.device("meta"):
        tiny = count_params(GPT(M.build_config("tiny", 8192, 256)))["counted"]
        gpt2 = M.build_config("gpt2-124m", 50257, 1024)
        gpt2_counted = count_params(GPT(gpt2))["counted"]
    assert 1_000_000 <= tiny <= 3_000_000
    assert gpt2.vocab_size == 50304 and (gpt2.n_layer, gpt2.n_embd, gpt2.n_head) == (12, 768, 12)
    assert 123_000_000 < gpt2_counted < 125_000_000  # GPT-2 small, tied, RoPE instead of learned positions
    with pytest.raises(ValueError, match="unknown preset"):
        M.build_config("huge", 8192, 1024)


# ----------------------------------------------------------------------------- masks and skip connections

ALL_SWITCHES = dict(doc_mask=True, delimiter_id=95, window=8, short_window=4, x0_mix=True, value_residual=True,
                    unet=True)


@pytest.mark.parametrize("overrides", [ALL_SWITCHES, dict(ALL_SWITCHES, n_layer=5),
                                       dict(x0_mix=True), dict(value_residual=True), dict(unet=True, n_layer=4)])
def test_skip_connection_scalars_count_once_each(overrides):
    model = GPT(tiny_config(**overrides))
    counts = count_params(model)
    total = sum(p.numel() for p in model.parameters())
    assert counts["counted"] == counts["unique"] == total  # one use per scalar, however it is mixed in
    scalars = sum(getattr(model, n).numel() for n in ("resid_lambdas", "x0_lambdas", "v_lambdas", "skip_weights")
                  if hasattr(model, n))
    L = model.config.n_layer
    c = model.config
    assert scalars == 2 * L * c.x0_mix + (L - 1) * c.value_residual + (L // 2) * c.unet
    assert counts["counted"] == count_params(GPT(tiny_config(n_layer=L)))["counted"] + scalars
    assert counts["embedding"] == 96 * 32  # the scalars are not embeddings


def test_skip_connection_scalars_count_once_with_layer_reuse():
    model = GPT(tiny_config(n_layer=6, n_unique_layers=2, **ALL_SWITCHES))
    counts = count_params(model)
    block = numel(model.blocks[0])
    assert counts["counted"] == counts["unique"] + 4 * block  # blocks per application, scalars (per layer) once
    with torch.device("meta"):
        assert count_params(GPT(model.config)) == counts  # meta-device counting runs the masked path too


def test_windows_and_document_masks_leave_the_marin_axis_alone():
    base = tiny_config(block_size=256)
    masked = tiny_config(block_size=256, **ALL_SWITCHES)
    assert flops.forward_flops_per_token(masked, 256) == flops.forward_flops_per_token(base, 256)
    assert flops.describe(masked, 256)["forward"] == flops.describe(base, 256)["forward"]


def test_keys_per_query_closed_forms():
    assert flops.keys_per_query(8) == 36 / 8                    # causal: 1 + 2 + ... + 8
    assert flops.keys_per_query(8, window=3) == (1 + 2 + 6 * 3) / 8
    assert flops.keys_per_query(8, doc_len=3) == (6 + 6 + 3) / 8  # documents 3, 3, 2
    assert flops.keys_per_query(8, window=2, doc_len=3) == (5 + 5 + 3) / 8  # 1+2+2, 1+2+2, 1+2
    assert flops.keys_per_query(8, window=100, doc_len=100) == flops.keys_per_query(8)


@pytest.mark.parametrize("overrides,doc_len", [(dict(window=5, short_window=2, window_pattern="LSL"), 0),
                                               (dict(doc_mask=True, delimiter_id=95), 7),
                                               (dict(ALL_SWITCHES, window=6, short_window=3), 10), ({}, 0)])
def test_attended_flops_count_the_pairs_the_model_attends(overrides, doc_len):
    S = 40
    config = tiny_config(**overrides)
    model = GPT(config)
    idx = torch.ones(1, S, dtype=torch.long)
    if doc_len:
        idx[0, ::doc_len] = 95  # documents of doc_len tokens, each led by its delimiter
    model.attention_impl = "sdpa"
    masks = model.attention_masks(idx) or {"L": torch.ones(S, S).tril().bool()}
    pairs = sum(int(masks[kind].sum()) for kind in config.layer_windows)  # the masks the forward uses
    h, hd = config.n_head, config.head_dim
    terms = flops.attended_forward_flops_terms(config, S, doc_len)
    assert terms["attn_scores"] == terms["attn_values"] == round(pairs / S * 2 * h * hd)
    assert terms["attn_softmax"] == round(pairs / S * 3 * h)
    marin = flops.forward_flops_terms(config, S)
    assert {k: v for k, v in terms.items() if not k.startswith("attn_")} == \
        {k: v for k, v in marin.items() if not k.startswith("attn_")}
    assert flops.attended_forward_flops_per_token(config, S, doc_len) == sum(terms.values())


def test_cli_shows_the_attended_figure_beside_marins(capsys):
    args = ["--preset=tiny", "--vocab_size=4096", "--block_size=256", "--window=64", "--short_window=16",
            "--doc_mask=true", "--delimiter_id=4095", "--doc_len=100"]
    assert flops.main(args) == 0
    out = capsys.readouterr().out
    config = M.build_config("tiny", 4096, 256, window=64, short_window=16, doc_mask=True, delimiter_id=4095)
    assert f"{flops.forward_flops_per_token(config, 256):,}" in out
    line = next(l for l in out.splitlines() if "attended" in l)
    assert "documents of 100 tokens" in line and f"{flops.attended_forward_flops_per_token(config, 256, 100):,}" in line
    assert flops.main(["--preset=tiny"]) == 0
    assert "attended" not in capsys.readouterr().out  # nothing masked: no extra figure
