"""
A checkpoint out of the repository: a Hugging Face transformers folder, or a GGUF file for llama.cpp and
Ollama. Run through model.py:

    python model.py export --ckpt runs/quick/checkpoints/step_000658.pt --out exports/quick
    python model.py export --ckpt CKPT --out exports/quick --push_to_hub you/quick-stories
    python model.py export --ckpt CKPT --out exports/quick-gguf --format gguf   # plain-Llama configs only

The Hugging Face folder holds model.safetensors, config.json, generation_config.json, tokenizer.json and
tokenizer_config.json. A config that is a plain Llama (see llama_blockers) becomes a standard
LlamaForCausalLM, which needs no code of ours; any other config is the project's own model.py (with
kernels.py, and any repository file model.py imports) plus hf_model.py, the thin PreTrainedModel wrapper
around it, loaded with trust_remote_code=True: there is no second copy of the architecture to drift.

The tokenizer: the project's BPE is tiktoken-style (a split pattern and ranked tokens, prepare.py). The
export turns it into the vocabulary + merges form transformers and llama.cpp read (bpe_merges) and checks
that every token round-trips to its own id. GGUF tokenizers name a llama.cpp pre-tokenizer instead of a
pattern; the closest to the project's split pattern is llama-bpe (Llama 3's), which differs only on runs
of three or more digits (Llama 3 groups digits in threes, the project in twos): ids differ on such text.

transformers, safetensors, tokenizers and gguf are optional packages, imported only here.
"""
import ast
import pathlib
import shutil
import sys
from dataclasses import asdict

import torch

import prepare
from model import GPT, GPTConfig, load_checkpoint, model_from_checkpoint

ROOT = pathlib.Path(__file__).resolve().parent
RMS_EPS = 1e-6  # model.Norm's RMSNorm epsilon
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# the GPTConfig fields of a plain Llama, and the value each must have (LlamaForCausalLM has no such part)
LLAMA_FIXED = dict(mlp="swiglu", norm="rmsnorm", rope=True, qk_norm=False, logit_softcap=0.0, n_unique_layers=0,
                   value_embeds=0, bigram_vocab=0, doc_mask=False, window=0, short_window=0, x0_mix=False,
                   value_residual=False, unet=False)
LLAMA_PRE_TOKENIZERS = {prepare.SPLIT_PATTERN: "llama-bpe"}  # llama.cpp's closest; see the docstring


def need(package: str, what: str):
    """Import an optional package, or a ValueError that says what to pip install."""
    try:
        return __import__(package)
    except ImportError:
        raise ValueError(f"{what} needs the {package} package: pip install {package}") from None


def import_transformers():
    """transformers, imported so that it finds the Hugging Face `kernels` package (a dependency of
    transformers 5, imported when it starts) rather than the repository's kernels.py, which has the same
    name and comes first on sys.path here; the repository's module is back under that name afterwards
    (transformers only looks the package up again when asked for hub kernels, which the export never is)."""
    if "transformers.modeling_utils" in sys.modules:
        return sys.modules["transformers"]
    need("transformers", "the Hugging Face export")
    ours, path = sys.modules.pop("kernels", None), sys.path[:]
    sys.path[:] = [p for p in path if pathlib.Path(p or ".").resolve() != ROOT]
    try:
        import transformers
        import transformers.generation  # noqa: F401
        import transformers.modeling_utils  # noqa: F401
    finally:
        sys.path[:] = path
        sys.modules.pop("kernels", None)
        if ours is not None:
            sys.modules["kernels"] = ours
    return transformers


# -----------------------------------------------------------------------------
# Tokenizer: tiktoken ranks -> vocabulary and merges


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which byte-level BPE files (tokenizer.json, GGUF) use."""
    return {b: c for c, b in prepare.byte_level_decoder().items()}


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merges, in rank order, that rebuild each multi-byte token of a tiktoken-style BPE: the token's
    bytes merged as tiktoken would with only the lower-ranked tokens, down to two parts (the same
    derivation as transformers' TikTokenConverter). ValueError when the ranks are not a BPE's."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pair_ranks = [ranks.get(parts[i] + parts[i + 1]) for i in range(len(parts) - 1)]
            candidates = [(r, i) for i, r in enumerate(pair_ranks) if r is not None and r < rank]
            if not candidates:
                raise ValueError(f"token {token!r} (rank {rank}) cannot be built from lower-ranked tokens")
            _, i = min(candidates)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if any(ranks.get(p, rank) >= rank for p in parts):
            raise ValueError(f"token {token!r} (rank {rank}) cannot be built from lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def tokenizer_parts(enc) -> dict:
    """What a byte-level BPE file needs, from a tiktoken Encoding: the split pattern, the vocabulary
    (printable strings -> ids), the merges as printable pairs and the delimiter."""
    ranks = enc._mergeable_ranks  # tiktoken keeps them; prepare.encoding_from_spec builds the Encoding from them
    show = bytes_to_unicode()
    text = {token: "".join(show[b] for b in token) for token in ranks}
    return {"pattern": enc._pat_str, "vocab": {text[t]: r for t, r in ranks.items()},
            "merges": [(text[a], text[b]) for a, b in bpe_merges(ranks)],
            "delimiter": prepare.DELIMITER, "delimiter_id": prepare.delimiter_id(enc), "n_vocab": enc.n_vocab}


def hf_tokenizer(parts: dict):
    """A `tokenizers` Tokenizer giving the project's ids: the split pattern, then byte-level BPE with
    whole-piece lookup first (ignore_merges, as tiktoken does); encoding with special tokens puts the
    delimiter first, as every training document starts."""
    need("tokenizers", "the Hugging Face tokenizer")
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    tok = Tokenizer(models.BPE(vocab=parts["vocab"], merges=parts["merges"], ignore_merges=True, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(parts["pattern"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    delimiter, delimiter_id = parts["delimiter"], parts["delimiter_id"]
    tok.add_special_tokens([AddedToken(delimiter, special=True, normalized=False)])
    if tok.token_to_id(delimiter) != delimiter_id:
        raise ValueError(f"the delimiter {delimiter} got id {tok.token_to_id(delimiter)} in the Hugging Face "
                         f"tokenizer, not the project's {delimiter_id}")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{delimiter} $A", pair=f"{delimiter} $A {delimiter} $B", special_tokens=[(delimiter, delimiter_id)])
    return tok


def check_tokenizer(tok, enc) -> None:
    """Every token whose bytes are text must encode to its own id, as the project's tokenizer does."""
    texts, ids = [], []
    for token, rank in enc._mergeable_ranks.items():
        try:
            texts.append(token.decode("utf-8"))
            ids.append(rank)
        except UnicodeDecodeError:
            continue  # a part of a character: never a whole text
    for text, rank, got in zip(texts, ids, tok.encode_batch(texts, add_special_tokens=False)):
        if got.ids != enc.encode_ordinary(text):
            raise ValueError(f"the converted tokenizer encodes {text!r} as {got.ids}, the project's as "
                             f"{enc.encode_ordinary(text)}; the export would not give the project's ids")


# -----------------------------------------------------------------------------
# Which configs are a plain Llama, and the Llama weights


def llama_blockers(config: GPTConfig) -> list[str]:
    """Why LlamaForCausalLM (and llama.cpp's llama architecture) cannot run this config: each GPTConfig
    field that differs from a plain Llama, with its value. Empty for a plain Llama. (RoPE's layout is no
    blocker: model.py rotates (first half, second half) pairs, as transformers' Llama does, by the opposite
    angle, which llama_state_dict turns into a sign flip of half of each query and key row.)"""
    c = asdict(config)
    return [f"{name}={c[name]!r} (a Llama has {value!r})" for name, value in LLAMA_FIXED.items()
            if c[name] != value and not (name == "n_unique_layers" and c[name] == config.n_layer)]


def flip_rotation(w, n_heads: int):
    """Negate the second half of each head's rows of a query or key projection (weight or bias): with it,
    transformers' rotation by +angle gives the scores of model.apply_rope's rotation by -angle."""
    w = w.clone().view(n_heads, 2, -1, *w.shape[1:])
    w[:, 1] = -w[:, 1]
    return w.view(-1, *w.shape[3:])


def llama_state_dict(model: GPT) -> dict:
    """The weights under LlamaForCausalLM's names (the head omitted when tied)."""
    c = model.config
    sd = {"model.embed_tokens.weight": model.transformer.wte.weight, "model.norm.weight": model.transformer.ln_f.weight}
    if not c.tie_embeddings:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, block in enumerate(model.blocks):
        p, a, m = f"model.layers.{i}.", block.attn, block.mlp
        parts = {"input_layernorm": block.norm1, "post_attention_layernorm": block.norm2,
                 "self_attn.q_proj": a.c_q, "self_attn.k_proj": a.c_k, "self_attn.v_proj": a.c_v,
                 "self_attn.o_proj": a.c_proj, "mlp.gate_proj": m.c_gate, "mlp.up_proj": m.c_fc, "mlp.down_proj": m.c_proj}
        for name, module in parts.items():
            for kind in ("weight", "bias"):
                tensor = getattr(module, kind, None)
                if tensor is None:
                    continue
                if name in ("self_attn.q_proj", "self_attn.k_proj"):
                    tensor = flip_rotation(tensor, c.n_head if name == "self_attn.q_proj" else c.n_kv_head)
                sd[f"{p}{name}.{kind}"] = tensor
    return sd


def llama_config(config: GPTConfig, parts: dict, dtype: str):
    transformers = import_transformers()
    return transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_head,
        head_dim=config.head_dim, max_position_embeddings=config.block_size, rms_norm_eps=RMS_EPS,
        rope_theta=config.rope_base, hidden_act="silu", attention_bias=config.bias, mlp_bias=config.bias,
        tie_word_embeddings=config.tie_embeddings, bos_token_id=parts["delimiter_id"],
        eos_token_id=parts["delimiter_id"], pad_token_id=parts["delimiter_id"], architectures=["LlamaForCausalLM"],
        torch_dtype=dtype)


# -----------------------------------------------------------------------------
# The Hugging Face folder


def remote_code_files() -> list[str]:
    """model.py, hf_model.py and every repository file model.py imports at module level (kernels.py ...),
    followed through those files' own module-level imports (imports inside functions are not followed:
    the command line's, which loading a model never runs)."""
    files, todo = [], ["model.py", "hf_model.py"]
    while todo:
        name = todo.pop()
        if name in files:
            continue
        files.append(name)
        for node in module_level_imports(ast.parse((ROOT / name).read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            todo += [f"{m.split('.')[0]}.py" for m in modules if m and (ROOT / f"{m.split('.')[0]}.py").is_file()]
    return sorted(files)


def module_level_imports(tree: ast.Module):
    """The import statements a module runs when imported: its top level, inside try/except and if."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.Try, ast.If)):
            stack += node.body + node.orelse + getattr(node, "finalbody", [])
            stack += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]


def write_hf_folder(model: GPT, enc, out: pathlib.Path, dtype: str) -> str:
    """Write the Hugging Face folder; returns its architecture (LlamaForCausalLM or SpeedrunForCausalLM)."""
    import_transformers()
    need("safetensors", "the Hugging Face export")
    from safetensors.torch import save_file
    from transformers import GenerationConfig, PreTrainedTokenizerFast
    config, parts = model.config, tokenizer_parts(enc)
    tok = hf_tokenizer(parts)
    check_tokenizer(tok, enc)
    if llama_blockers(config):
        import hf_model  # the wrapper's config class writes config.json as the folder's code will read it
        hf_config = hf_model.SpeedrunConfig(
            gpt=asdict(config), architectures=["SpeedrunForCausalLM"], torch_dtype=dtype,
            auto_map={"AutoConfig": "hf_model.SpeedrunConfig", "AutoModelForCausalLM": "hf_model.SpeedrunForCausalLM"},
            bos_token_id=parts["delimiter_id"], eos_token_id=parts["delimiter_id"], pad_token_id=parts["delimiter_id"])
        # each weight once, under its first name: a tied head is the embedding, a reused block its first use
        state = {f"gpt.{k}": v for k, v in model.named_parameters()}
        for name in remote_code_files():
            shutil.copyfile(ROOT / name, out / name)
        architecture = "SpeedrunForCausalLM"
    else:
        hf_config = llama_config(config, parts, dtype)
        state, architecture = llama_state_dict(model), "LlamaForCausalLM"
    hf_config.save_pretrained(out)
    state = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in state.items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    padding_rows = list(range(parts["n_vocab"], config.vocab_size))  # a padded vocabulary's rows: never sampled
    GenerationConfig(bos_token_id=parts["delimiter_id"], eos_token_id=parts["delimiter_id"],
                     pad_token_id=parts["delimiter_id"], do_sample=True,
                     temperature=0.8, suppress_tokens=padding_rows or None).save_pretrained(out)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=parts["delimiter"], eos_token=parts["delimiter"],
                                   pad_token=parts["delimiter"], model_max_length=config.block_size,
                                   padding_side="left")
    fast.save_pretrained(out)
    return architecture


# -----------------------------------------------------------------------------
# GGUF (llama.cpp's llama architecture)


def interleave_rotation(w, n_heads: int):
    """transformers' (first half, second half) rotary pairs -> llama.cpp's adjacent pairs, per head (the
    permutation of llama.cpp's convert_hf_to_gguf.py)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_pre_tokenizer(enc) -> str:
    """The llama.cpp pre-tokenizer of a tokenizer: gpt-2 for GPT-2's, llama-bpe for the project's BPE
    (see the module docstring), "" when llama.cpp has none."""
    return "gpt-2" if enc.name == "gpt2" else LLAMA_PRE_TOKENIZERS.get(enc._pat_str, "")


def write_gguf(model: GPT, enc, path: pathlib.Path, dtype: str) -> str:
    """Write a GGUF file of llama.cpp's llama architecture; returns the pre-tokenizer it names."""
    gguf = need("gguf", "the GGUF export")
    import numpy as np
    config, parts = model.config, tokenizer_parts(enc)
    if config.bias:
        raise ValueError("the GGUF export writes no biases: the config has bias=True; export --format hf instead")
    pre = gguf_pre_tokenizer(enc)
    if not pre:
        raise ValueError("llama.cpp has no pre-tokenizer for this tokenizer's split pattern; export --format hf")
    if dtype == "bfloat16":
        raise ValueError("--format gguf writes float32 or float16; use --dtype float32 or float16")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(path.stem)
    w.add_context_length(config.block_size)
    w.add_embedding_length(config.n_embd)
    w.add_block_count(config.n_layer)
    w.add_feed_forward_length(config.d_ff)
    w.add_head_count(config.n_head)
    w.add_head_count_kv(config.n_kv_head)
    w.add_rope_dimension_count(config.head_dim)
    w.add_rope_freq_base(config.rope_base)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_vocab_size(config.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "float32" else gguf.LlamaFileType.MOSTLY_F16)
    # the tokenizer, padded with unused tokens to the model's (padded) vocabulary, as llama.cpp requires
    by_id = {i: t for t, i in parts["vocab"].items()}
    by_id[parts["delimiter_id"]] = parts["delimiter"]
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(config.vocab_size)]
    types = [gguf.TokenType.CONTROL if i == parts["delimiter_id"] else
             gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED for i in range(config.vocab_size)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in parts["merges"]])
    w.add_bos_token_id(parts["delimiter_id"])
    w.add_eos_token_id(parts["delimiter_id"])
    w.add_pad_token_id(parts["delimiter_id"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, tensor in llama_state_dict(model).items():
        t = tensor.detach().float()
        if name.endswith("q_proj.weight"):
            t = interleave_rotation(t, config.n_head)
        elif name.endswith("k_proj.weight"):
            t = interleave_rotation(t, config.n_kv_head)
        base = name[:-len(".weight")]
        if base.startswith("model.layers."):
            i, rest = base[len("model.layers."):].split(".", 1)
            gguf_name = f"blk.{i}.{names[rest]}.weight"
        else:
            gguf_name = f"{names[base]}.weight"
        # norms stay float32 (llama.cpp requires it); matrices in the chosen dtype
        array = t.numpy().astype(np.float16 if dtype == "float16" and t.dim() == 2 else np.float32)
        w.add_tensor(gguf_name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return pre


# -----------------------------------------------------------------------------
# The command


def push_to_hub(folder: pathlib.Path, repo: str, private: bool = False, api=None) -> str:
    """Upload the folder to the hub repo (created if missing); returns the commit URL. `api`: a
    huggingface_hub.HfApi (the default) or anything with its create_repo and upload_folder."""
    if api is None:
        api = need("huggingface_hub", "--push_to_hub").HfApi()
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    return str(api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                                 commit_message="python model.py export"))


def prepare_out(out: pathlib.Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out={out}: exists and is not an empty folder; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)


def load_for_export(path) -> tuple[GPT, object]:
    """The checkpoint's model in float32 on the CPU, in eval mode, and its tokenizer (a tiktoken Encoding)."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt).float().eval()
    try:
        enc = prepare.encoding_from_spec(ckpt.get("tokenizer") or {})
    except ValueError as e:
        raise ValueError(f"--ckpt={path}: {e}") from None
    return model, enc


def export(args) -> pathlib.Path:
    """`python model.py export`: write the folder (or OUT/model.gguf), then optionally upload it."""
    if args.format == "gguf" and args.push_to_hub:
        raise ValueError("--push_to_hub uploads the Hugging Face folder; export it without --format gguf")
    model, enc = load_for_export(args.ckpt)
    blockers = llama_blockers(model.config)
    if args.format == "gguf" and blockers:
        raise ValueError("llama.cpp runs plain-Llama configs only, and this checkpoint has "
                         + "; ".join(blockers) + "; export --format hf instead (transformers with trust_remote_code)")
    out = pathlib.Path(args.out)
    prepare_out(out)
    if args.format == "gguf":
        pre = write_gguf(model, enc, out / "model.gguf", args.dtype)
        print(f"wrote {out / 'model.gguf'} (llama architecture, {args.dtype}, pre-tokenizer {pre})")
        if pre == "llama-bpe":
            print("note: llama.cpp splits runs of 3+ digits in threes, the project's tokenizer in twos; "
                  "text with such numbers gets other ids in llama.cpp")
        return out
    architecture = write_hf_folder(model, enc, out, args.dtype)
    how = "no remote code" if architecture == "LlamaForCausalLM" else "trust_remote_code=True"
    print(f"wrote {out} ({architecture}, {args.dtype}; AutoModelForCausalLM.from_pretrained({str(out)!r}, {how}))")
    if blockers:
        print("not a plain Llama (" + "; ".join(blockers) + "): the folder carries model.py as remote code")
    if args.push_to_hub:
        print(f"uploaded to {args.push_to_hub}: {push_to_hub(out, args.push_to_hub, args.private)}")
    return out
