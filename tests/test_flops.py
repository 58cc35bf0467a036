"""Tests for flops.py: Marin's convention term by term, the published 130M example, agreement with
torch.utils.flop_counter on a real forward+backward, device peaks, hardware FLOPs and MFU, the CLI."""
import math
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import flops
from model import GPT, GPTConfig, preset_config

ROOT = flops.__file__.rsplit("/", 1)[0]


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
    config = GPTConfig(use_kernels=False, **shape)
    torch.manual_seed(0)
    model = GPT(config)
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
    ("NVIDIA A10G", None), ("NVIDIA H100 NVL", None), ("NVIDIA GeForce RTX 4090", None), ("cpu", None)])
def test_device_names_map_to_datasheet_peaks(name, peak):
    assert flops.device_peak_flops(name) == ((peak, "datasheet") if peak else (None, "unknown"))


def test_cpu_without_name_is_unknown_and_measured_peak_is_plausible():
    if not torch.cuda.is_available():
        assert flops.device_peak_flops() == (None, "unknown")
    measured = flops.measure_matmul_peak("cpu", seconds=0.2)
    assert 1e8 < measured < 1e14 and math.isfinite(measured)


def test_hardware_flops_and_mfu():
    hw = flops.hardware_flops(3600.0, 8, 989.5e12)
    assert hw == 3600.0 * 8 * 989.5e12
    mf = flops.model_flops(preset_config("small", 8192, 1024), 1024, 10 ** 9)
    assert flops.mfu(mf, hw) == pytest.approx(mf / (3600 * 8 * 989.5e12))


def run_cli(*args):
    return subprocess.run([sys.executable, "flops.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_presets_table():
    out = run_cli()  # the real command line, as the README shows it
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "preset" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["small", "medium", "large"]
    for row, name in zip(rows, ["small", "medium", "large"]):
        cells = [c.strip() for c in row.split("|")]
        assert cells[6] == name  # each preset lands in its own class
        assert int(cells[7].replace(",", "")) == flops.forward_flops_per_token(preset_config(name, 8192, 1024), 1024)


def test_cli_single_model_table(capsys):
    assert flops.main(["--preset=small", "--tokens=1e9", "--device=H100 SXM", "--mfu=0.5"]) == 0
    out = capsys.readouterr().out
    assert "weight class" in out and "small" in out
    expected_seconds = flops.model_flops(preset_config("small", 8192, 1024), 1024, 10 ** 9) / (989.5e12 * 0.5)
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
