"""Tests for `python model.py sample` and `python model.py export` (model.py, export.py, hf_model.py).

The exported folders are loaded the way a user loads them: in a fresh Python outside the repository
(transformers 5 imports the Hugging Face `kernels` package, which the repository's kernels.py would
shadow, and a folder must not need the repository anyway). Tests that need transformers, safetensors,
gguf or llama-cpp-python skip with the pip command when they are missing (.ci/run installs them).
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import export
import model as model_lib
import prepare
from helpers import byte_spec

HAS = {name: importlib.util.find_spec(name) is not None
       for name in ("transformers", "safetensors", "tokenizers", "gguf", "llama_cpp")}
needs_hf = pytest.mark.skipif(not (HAS["transformers"] and HAS["safetensors"] and HAS["tokenizers"]),
                              reason="needs transformers, safetensors, tokenizers: pip install transformers safetensors")
needs_gguf = pytest.mark.skipif(not (HAS["gguf"] and HAS["llama_cpp"] and HAS["tokenizers"]),
                                reason="needs gguf and llama-cpp-python: pip install gguf llama-cpp-python")

# what the test tokenizer is trained on: stories, non-ASCII text and numbers (so it learns two-digit tokens)
TRAIN_TEXTS = (["Once upon a time, a little girl named Lily found a shiny red ball in the park. She was happy."] * 30
               + ["Zoë and the café: naïve crêpes, 東京 and a fox 🦊."] * 8
               + ["In 2024 there were 12 cats, 45 dogs and 1999 birds; 20 24 19 99 12 45."] * 8)
# a text no model here saw, with multi-byte characters (2, 3 and 4 bytes) and a contraction
UNSEEN = "Zoë's naïve café served crêpes to a fox 🦊 in 東京; \"don't\" she said, and they laughed."
EVERY_SWITCH = [  # every GPTConfig switch, over two configs (each has one norm, one MLP, one position scheme)
    dict(mlp="relu2", norm="rmsnorm", rope=True, qk_norm=True, logit_softcap=15.0, n_unique_layers=3,
         value_embeds=2, bigram_vocab=16, doc_mask=True, window=48, short_window=8, window_pattern="LSSL",
         x0_mix=True, value_residual=True, unet=True, tie_embeddings=False),
    dict(mlp="gelu", norm="layernorm", rope=False, qk_norm=True, logit_softcap=10.0, bias=True, tie_embeddings=True,
         n_unique_layers=2, value_embeds=1, bigram_vocab=8, x0_mix=True, value_residual=True, unet=True),
]
PLAIN_LLAMA = dict(mlp="swiglu", norm="rmsnorm", rope=True, qk_norm=False, logit_softcap=0.0)


@pytest.fixture(scope="module")
def bpe():
    """A real byte-level BPE (with merges) and its tiktoken Encoding."""
    spec = prepare.train_bpe(TRAIN_TEXTS, 400, "bpe:400")
    return spec, prepare.encoding_from_spec(spec)


def make_checkpoint(path, spec, seed=0, **settings):
    """A 4-layer model with every weight perturbed away from its initial value (so the learned scalars and
    zero-initialised matrices all take part), saved as train.py saves one."""
    enc = prepare.encoding_from_spec(spec)
    config = model_lib.GPTConfig(**{**dict(vocab_size=model_lib.padded_vocab_size(enc.n_vocab), n_layer=4, n_head=4,
                                           n_kv_head=2, n_embd=32, block_size=128, zero_init=False,
                                           delimiter_id=prepare.delimiter_id(enc)), **settings})
    torch.manual_seed(seed)
    gpt = model_lib.GPT(config)
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model_lib.save_checkpoint(path, gpt, config, spec, step=1)
    return gpt.eval(), enc


LOAD = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, request = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=request["remote"])
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=request["remote"])
x = torch.tensor([request["ids"]])
batch = tokenizer(request["batch"], return_tensors="pt", padding=True)
greedy = dict(do_sample=False, max_new_tokens=request["new"])
print(json.dumps({
    "class": type(model).__name__,
    "logits": model(x).logits[0].tolist(),
    "logits_no_cache": model(x, use_cache=False).logits[0].tolist(),
    "greedy": model.generate(x, **greedy)[0, x.size(1):].tolist(),
    "batch_greedy": model.generate(**batch, **greedy)[:, batch["input_ids"].size(1):].tolist(),
    "ids": tokenizer(request["text"])["input_ids"],
    "ids_plain": tokenizer(request["text"], add_special_tokens=False)["input_ids"],
    "decoded": tokenizer.decode(tokenizer(request["text"], add_special_tokens=False)["input_ids"]),
}))
"""


def load_outside_repo(folder, tmp_path, request: dict) -> dict:
    """Run LOAD in a fresh Python that cannot import the repository (cwd elsewhere, no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    env["HF_HUB_OFFLINE"] = "1"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-c", LOAD, str(folder), json.dumps(request)], cwd=cwd, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def until(tokens, stop):
    return tokens[:tokens.index(stop)] if stop in tokens else tokens


def check_against_ours(gpt, enc, result, prompts):
    """The exported model's logits, greedy tokens (one prompt, and a left-padded batch) and tokenizer ids
    against the project's."""
    delimiter = prepare.delimiter_id(enc)
    ids = [delimiter] + enc.encode_ordinary(UNSEEN)
    ours = gpt(torch.tensor([ids]))[0]
    torch.testing.assert_close(torch.tensor(result["logits"]), ours, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(result["logits_no_cache"]), ours, atol=1e-4, rtol=0)
    greedy = dict(temperature=0, stop_token=delimiter, valid_vocab=enc.n_vocab)
    assert until(result["greedy"], delimiter) == gpt.generate([ids], 12, **greedy)[0]
    contexts = [[delimiter] + enc.encode_ordinary(p) for p in prompts]
    assert [until(t, delimiter) for t in result["batch_greedy"]] == gpt.generate(contexts, 12, **greedy)
    assert result["ids"] == ids and result["ids_plain"] == ids[1:]
    assert result["decoded"] == UNSEEN


# -----------------------------------------------------------------------------
# The tokenizer conversion


def test_bpe_merges_of_a_hand_made_bpe():
    # a, b, c bytes; "bc" before "ab", so "abc" is a + bc; "abcab" = abc + ab
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"ab": 4, b"abc": 5, b"abcab": 6}
    assert export.bpe_merges(ranks) == [(b"b", b"c"), (b"a", b"b"), (b"a", b"bc"), (b"abc", b"ab")]
    with pytest.raises(ValueError, match="cannot be built"):
        export.bpe_merges({b"a": 0, b"b": 1, b"abc": 2})


@needs_hf
def test_hf_tokenizer_gives_the_projects_ids(bpe):
    spec, enc = bpe
    tok = export.hf_tokenizer(export.tokenizer_parts(enc))
    export.check_tokenizer(tok, enc)
    for text in TRAIN_TEXTS[::7] + [UNSEEN, "  two  spaces\n\nand lines\r\n", "x" * 300, "don'T WE'LL"]:
        assert tok.encode(text, add_special_tokens=False).ids == enc.encode_ordinary(text)
    assert tok.encode("Hi").ids == [prepare.delimiter_id(enc)] + enc.encode_ordinary("Hi")
    assert tok.decode(enc.encode_ordinary(UNSEEN)) == UNSEEN


@needs_hf
def test_hf_tokenizer_on_the_tinystories_valid_head(shared_data):
    """A 1024-token BPE trained on the V2 sample, and GPT-2's, on the whole 794,375-byte valid head."""
    text = (shared_data / "tinystories" / "tinystories_hf_validation_head.txt").read_text(encoding="utf-8")
    train = (shared_data / "tinystories" / "TinyStoriesV2-GPT4-train_first10000lines.txt").read_text(encoding="utf-8")
    specs = [prepare.train_bpe(train.split("<|endoftext|>"), 1024, "bpe:1024")]
    try:
        prepare.encoding_from_spec({"name": "gpt2"})
        specs.append({"name": "gpt2"})
    except ValueError:
        pass  # no offline copy of GPT-2's files
    for spec in specs:
        enc = prepare.encoding_from_spec(spec)
        tok = export.hf_tokenizer(export.tokenizer_parts(enc))
        assert tok.encode(text + UNSEEN, add_special_tokens=False).ids == enc.encode_ordinary(text + UNSEEN), spec["name"]


# -----------------------------------------------------------------------------
# The Hugging Face folder


@needs_hf
@pytest.mark.parametrize("settings", EVERY_SWITCH, ids=["rmsnorm-rope-relu2", "layernorm-learned-gelu"])
def test_remote_code_export_matches_the_model(tmp_path, bpe, settings):
    spec, _ = bpe
    gpt, enc = make_checkpoint(tmp_path / "ckpt.pt", spec, **settings)
    out = tmp_path / "hf"
    assert model_lib.main(["export", "--ckpt", str(tmp_path / "ckpt.pt"), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.py", "kernels.py", "hf_model.py"} <= names
    for name in ("model.py", "kernels.py", "hf_model.py"):  # the project's own files, unchanged
        assert (out / name).read_bytes() == (export.ROOT / name).read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "hf_model.SpeedrunForCausalLM"
    assert config["gpt"] == json.loads(json.dumps(torch.load(tmp_path / "ckpt.pt", weights_only=True)["config"]))
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == generation["bos_token_id"] == prepare.delimiter_id(enc)
    assert generation["suppress_tokens"] == list(range(enc.n_vocab, gpt.config.vocab_size))  # the padding rows
    prompts = ["Once upon a time", "Zoë"]
    result = load_outside_repo(out, tmp_path, dict(remote=True, ids=[prepare.delimiter_id(enc)] + enc.encode_ordinary(UNSEEN),
                                                   new=12, text=UNSEEN, batch=prompts))
    assert result["class"] == "SpeedrunForCausalLM"
    check_against_ours(gpt, enc, result, prompts)


def test_llama_blockers_name_every_extra():
    config = model_lib.GPTConfig(**EVERY_SWITCH[0], delimiter_id=0)
    blockers = " ".join(export.llama_blockers(config))
    for name in ("mlp", "qk_norm", "logit_softcap", "n_unique_layers", "value_embeds", "bigram_vocab", "doc_mask",
                 "window", "short_window", "x0_mix", "value_residual", "unet"):
        assert f"{name}=" in blockers
    assert export.llama_blockers(model_lib.GPTConfig(**PLAIN_LLAMA, bias=True, tie_embeddings=True,
                                                     n_unique_layers=12)) == []
    assert "norm='layernorm'" in " ".join(export.llama_blockers(model_lib.GPTConfig(**{**PLAIN_LLAMA, "norm": "layernorm"})))
    assert "rope=False" in " ".join(export.llama_blockers(model_lib.GPTConfig(**{**PLAIN_LLAMA, "rope": False})))


def test_flip_rotation_turns_our_rope_into_transformers():
    """model.apply_rope on q and k gives the same scores as transformers' rotate_half rotation (written out
    here) on the flipped q and k."""
    torch.manual_seed(0)
    heads, hd, T = 2, 8, 5
    q, k = torch.randn(1, T, heads, hd, dtype=torch.float64), torch.randn(1, T, heads, hd, dtype=torch.float64)
    cos, sin = model_lib.rope_angles(torch.arange(T)[None], hd, 10000.0)
    cos, sin = cos.double(), sin.double()
    ours = torch.einsum("bthd,bshd->bhts", model_lib.apply_rope(q, cos, sin), model_lib.apply_rope(k, cos, sin))

    def hf_rope(x):  # transformers' Llama: x * cos + rotate_half(x) * sin, cos/sin repeated over both halves
        c, s = torch.cat([cos, cos], -1)[:, :, None], torch.cat([sin, sin], -1)[:, :, None]
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return x * c + torch.cat([-x2, x1], -1) * s

    def flipped(x):  # the flip applied to the projection's output rows, head by head
        return export.flip_rotation(x.reshape(-1, heads * hd).T, heads).T.reshape(x.shape)

    theirs = torch.einsum("bthd,bshd->bhts", hf_rope(flipped(q)), hf_rope(flipped(k)))
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)  # apply_rope rotates in float32


@needs_hf
@pytest.mark.parametrize("settings", [dict(tie_embeddings=False), dict(tie_embeddings=True, bias=True)],
                         ids=["untied", "tied-bias"])
def test_plain_llama_export_is_a_standard_llama(tmp_path, bpe, settings):
    spec, _ = bpe
    gpt, enc = make_checkpoint(tmp_path / "ckpt.pt", spec, **PLAIN_LLAMA, **settings)
    out = tmp_path / "llama"
    assert model_lib.main(["export", "--ckpt", str(tmp_path / "ckpt.pt"), "--out", str(out)]) == 0
    assert not list(out.glob("*.py"))  # no remote code
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert "auto_map" not in config
    prompts = ["Once upon a time", "Zoë"]
    result = load_outside_repo(out, tmp_path, dict(remote=False, ids=[prepare.delimiter_id(enc)] + enc.encode_ordinary(UNSEEN),
                                                   new=12, text=UNSEEN, batch=prompts))
    assert result["class"] == "LlamaForCausalLM"
    check_against_ours(gpt, enc, result, prompts)


@needs_hf
def test_export_refuses_a_folder_with_files(tmp_path, bpe, capsys):
    make_checkpoint(tmp_path / "ckpt.pt", bpe[0], **PLAIN_LLAMA)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert model_lib.main(["export", "--ckpt", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "out")]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_a_missing_package_says_what_to_install():
    with pytest.raises(ValueError, match="pip install no_such_package_here"):
        export.need("no_such_package_here", "the test")


class FakeHubApi:
    """Records the calls export.push_to_hub makes (the hub itself cannot be reached from the tests)."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        files = sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())
        self.calls.append(("upload_folder", repo_id, folder_path, files, kwargs))
        return f"https://huggingface.co/{repo_id}/commit/0"


@needs_hf
def test_push_to_hub_uploads_the_exported_folder(tmp_path, bpe, monkeypatch, capsys):
    """--push_to_hub creates the repo and uploads the folder the export wrote (with a fake HfApi: the
    network is not reachable here, so the upload itself is not tested)."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    make_checkpoint(tmp_path / "ckpt.pt", bpe[0], **PLAIN_LLAMA)
    api = FakeHubApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: api)
    out = tmp_path / "hf"
    assert model_lib.main(["export", "--ckpt", str(tmp_path / "ckpt.pt"), "--out", str(out),
                           "--push_to_hub", "someone/tiny-stories", "--private"]) == 0
    assert api.calls[0] == ("create_repo", "someone/tiny-stories", dict(repo_type="model", private=True, exist_ok=True))
    kind, repo, folder, files, _ = api.calls[1]
    assert (kind, repo, folder) == ("upload_folder", "someone/tiny-stories", str(out))
    assert files == sorted(p.name for p in out.iterdir()) and "model.safetensors" in files
    assert "uploaded to someone/tiny-stories: https://huggingface.co/someone/tiny-stories/commit/0" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# GGUF


def gguf_logprobs(path, ids, n_vocab):
    from llama_cpp import Llama
    llm = Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1)
    try:
        llm.eval(ids)
        scores = torch.tensor(llm.scores[:len(ids)]).double()
        tokenize = {text: llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
                    for text in (UNSEEN, "In 2024 she had 1999 cats.")}
        with_bos = llm.tokenize(b"Hi")
    finally:
        llm.close()
    return torch.log_softmax(scores[:, :n_vocab], -1), tokenize, with_bos


@needs_gguf
@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-3), ("float16", 2e-2)])
def test_gguf_export_runs_in_llama_cpp(tmp_path, bpe, dtype, tolerance):
    """Next-token log-probabilities of llama.cpp on the GGUF against ours, on a text the model never saw:
    within 1e-3 nats for float32 weights, 2e-2 for float16."""
    spec, _ = bpe
    gpt, enc = make_checkpoint(tmp_path / "ckpt.pt", spec, **PLAIN_LLAMA, tie_embeddings=True)
    out = tmp_path / "gguf"
    assert model_lib.main(["export", "--ckpt", str(tmp_path / "ckpt.pt"), "--out", str(out), "--format", "gguf",
                           "--dtype", dtype]) == 0
    delimiter = prepare.delimiter_id(enc)
    ids = [delimiter] + enc.encode_ordinary(UNSEEN)
    theirs, tokenize, with_bos = gguf_logprobs(out / "model.gguf", ids, enc.n_vocab)
    ours = torch.log_softmax(gpt(torch.tensor([ids]))[0, :, :enc.n_vocab].double(), -1)
    torch.testing.assert_close(theirs, ours, atol=tolerance, rtol=0)
    assert tokenize[UNSEEN] == ids[1:] and with_bos == [delimiter] + enc.encode_ordinary("Hi")
    # the documented mismatch: llama.cpp's llama-bpe groups digits in threes, the project in twos
    numbers = "In 2024 she had 1999 cats."
    assert [enc.decode([t]) for t in enc.encode_ordinary("2024")] == ["20", "24"]
    assert tokenize[numbers] != enc.encode_ordinary(numbers)


@needs_gguf
def test_gguf_export_refuses_what_llama_cpp_cannot_run(tmp_path, bpe, capsys):
    make_checkpoint(tmp_path / "ckpt.pt", bpe[0], **EVERY_SWITCH[0])
    assert model_lib.main(["export", "--ckpt", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "g"),
                           "--format", "gguf"]) == 2
    err = capsys.readouterr().err
    assert "llama.cpp runs plain-Llama configs only" in err and "qk_norm=True" in err and "export --format hf" in err
    assert not (tmp_path / "g").exists()


# -----------------------------------------------------------------------------
# python model.py sample


def test_sample_streams_the_greedy_completion(tmp_path, bpe, capsys):
    spec, _ = bpe
    gpt, enc = make_checkpoint(tmp_path / "ckpt.pt", spec, **EVERY_SWITCH[0])
    assert model_lib.main(["sample", "--ckpt", str(tmp_path / "ckpt.pt"), "--prompt", "Once upon",
                           "--temperature", "0", "--max_new_tokens", "20", "--device", "cpu"]) == 0
    delimiter = prepare.delimiter_id(enc)
    tokens = gpt.generate([[delimiter] + enc.encode_ordinary("Once upon")], 20, temperature=0, stop_token=delimiter,
                          valid_vocab=enc.n_vocab)[0]
    expected = "--- prompt 1/1, sample 1/1 ---\nOnce upon" + enc.decode_bytes(tokens).decode("utf-8", "replace") + "\n"
    assert capsys.readouterr().out == expected


def test_sample_prompts_file_n_seed_and_block_size_cap(tmp_path, bpe, capsys):
    spec, _ = bpe
    make_checkpoint(tmp_path / "ckpt.pt", spec, **PLAIN_LLAMA)
    (tmp_path / "prompts.txt").write_text("Once upon a time\n\nLily found\n", encoding="utf-8")
    args = ["sample", "--ckpt", str(tmp_path / "ckpt.pt"), "--prompts", str(tmp_path / "prompts.txt"), "--n", "2",
            "--top_k", "20", "--top_p", "0.9", "--seed", "7", "--max_new_tokens", "500", "--device", "cpu"]
    assert model_lib.main(args) == 0
    first = capsys.readouterr()
    headers = [line for line in first.out.splitlines() if line.startswith("--- prompt")]
    assert headers == ["--- prompt 1/2, sample 1/2 ---", "--- prompt 1/2, sample 2/2 ---",
                       "--- prompt 2/2, sample 1/2 ---", "--- prompt 2/2, sample 2/2 ---"]
    assert "capped to" in first.err and "block_size 128" in first.err
    assert model_lib.main(args) == 0
    assert capsys.readouterr().out == first.out  # the same seed, the same stories


def test_sample_stops_at_the_end_of_document_token(tmp_path, bpe, capsys, monkeypatch):
    """A model whose logits always pick the delimiter writes an empty completion: nothing after the prompt."""
    spec, enc = bpe
    gpt, _ = make_checkpoint(tmp_path / "ckpt.pt", spec, **PLAIN_LLAMA)
    delimiter = prepare.delimiter_id(enc)
    monkeypatch.setattr(model_lib.GPT, "logits", lambda self, h: 1e4 * torch.nn.functional.one_hot(
        torch.full(h.shape[:-1], delimiter), gpt.config.vocab_size).float())  # certain even when sampled
    assert model_lib.main(["sample", "--ckpt", str(tmp_path / "ckpt.pt"), "--prompt", "Hi", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == "--- prompt 1/1, sample 1/1 ---\nHi\n"


def test_token_printer_prints_a_split_character_whole():
    """With the byte tokenizer each byte is a token: 'é' (2 bytes) and '🦊' (4) are printed once complete."""
    import io
    enc = prepare.encoding_from_spec(byte_spec())
    out = io.StringIO()
    printer = model_lib.TokenPrinter(enc, out)
    seen = []
    for token in enc.encode_ordinary("aé🦊"):
        printer(0, token)
        seen.append(out.getvalue())
    printer.finish()
    assert seen == ["a", "a", "aé", "aé", "aé", "aé", "aé🦊"] and out.getvalue() == "aé🦊\n"


@pytest.mark.parametrize("flag,value,message", [("--n", "0", "--n must be at least 1"),
                                                ("--temperature", "-1", "--temperature must be >= 0"),
                                                ("--top_p", "1.5", "--top_p must be in (0, 1]"),
                                                ("--top_k", "0", "--top_k must be at least 1")])
def test_sample_refuses_bad_settings(tmp_path, capsys, flag, value, message):
    assert model_lib.main(["sample", "--ckpt", str(tmp_path / "none.pt"), flag, value]) == 2
    assert message in capsys.readouterr().err


def test_sample_names_a_missing_checkpoint(tmp_path, capsys):
    assert model_lib.main(["sample", "--ckpt", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
