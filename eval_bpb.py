"""
Bits per byte (BPB) of a checkpoint on an eval set: the score of every track.

    python eval_bpb.py --ckpt checkpoints/run/final.pt --data tinystories-valid
    python eval_bpb.py --ckpt final.pt --data data/tinystories --seq_len 1024 --json
    python eval_bpb.py --ckpt final.pt --data "texts/*.jsonl" --record records/open/2026-01-01_me --eval_id my-texts
    torchrun --standalone --nproc_per_node=8 eval_bpb.py --ckpt final.pt --data paloma-c4-en

--data is one of
  - an official eval set by name (tinystories-valid, paloma-c4-en, c4-en-val, fineweb-edu-val): data/eval/<name>/,
    written by prepare.py. The primary eval of the TinyStories tracks is tinystories-valid; of fineweb-edu and
    open, paloma-c4-en (Paloma's C4-EN val split, what Marin scores as eval/paloma/c4_en/bpb). c4-en-val is
    allenai/c4's validation set, another text, kept as a secondary eval;
  - a folder prepared by prepare.py: its val shards (the checkpoint's tokenizer must be the folder's, or
    --retokenize decodes the shards' text and tokenizes it with the checkpoint's; automatic for the
    official sets, which prepare.py tokenizes once for everybody);
  - raw text: a .txt/.jsonl file (or any format prepare.py reads) or a quoted glob of them, split into
    documents and cleaned by prepare.py's own readers (no de-duplication) and tokenized with the
    checkpoint's own tokenizer.

The definition, computed by evaluate_bpb, which train.py's validation calls too, so there is one:

    BPB = sum of nats over predicted text tokens / (ln 2 * sum of UTF-8 bytes of those tokens)

summed over the whole eval set (float64 nats, int64 bytes, all-reduced across ranks), never averaged
over batches. Special tokens (the document delimiter) have 0 bytes; predicting them is excluded
from both sums. With a byte-level BPE the byte sum is the UTF-8 length of the scored text whatever
the tokenizer, which is what makes BPB comparable across tokenizers.

How the eval stream is cut: the tokens are the val shards in order, [<|endoftext|> doc1 <|endoftext|>
doc2 ...]. Window i holds inputs tokens[i*T : i*T+T] and targets shifted by one, tokens[i*T+1 :
i*T+T+1], with T = seq_len; the windows do not overlap and the last, partial one is scored too, so
every token after the first is predicted exactly once. T is the context the tokens are scored in and
changes the BPB, so the eval entry records it (seq_len; a text shorter than T is one window). Rank r of W scores windows r, r+W, r+2W, ...;
the sums do not depend on batch_size or W.

Document boundaries: the model attends here exactly as it did in training, because the attention
masks are part of the model (model.py): plain causal attention across documents by default, and, for a
model with doc_mask, attention inside each document only (split at the delimiter in the window itself),
sliding windows included. Unlike training, windows here are fixed slices of the stream, not aligned to
documents: that is what lets every token be scored exactly once. The delimiter is input only: its
prediction is not scored.

The fingerprint is the SHA-256 of the scored text: the UTF-8 bytes of every scored token with one
0xFF byte (never valid in UTF-8) where a document boundary is predicted. The same text scored
through two tokenizers gets the same fingerprint; leaderboard.py ranks together only runs that share it.
"""
import contextlib
import glob
import hashlib
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

import common
import leaderboard  # the record format: results.json's reader and writer
import prepare
from model import cuda_has_native_bf16, load_checkpoint, model_from_checkpoint

ROOT = pathlib.Path(__file__).resolve().parent
EVAL_DIR = ROOT / "data" / "eval"
# The official eval sets: the val split of data/eval/<id>/, and how to make it. Each is tokenized once;
# a checkpoint with another tokenizer gets the same text re-tokenized (same bytes, same fingerprint).
OFFICIAL_EVAL_SETS = {
    "tinystories-valid": ("TinyStoriesV2-GPT4 validation", "python prepare.py --dataset tinystories-valid "
                          "--tokenizer data/tinystories --out data/eval/tinystories-valid"),
    "paloma-c4-en": ("Paloma C4-EN validation, Marin's score (primary for fineweb-edu and open)",
                     "python prepare.py --dataset paloma-c4-en --out data/eval/paloma-c4-en (a gated dataset: accept "
                     "its terms on Hugging Face and log in first)"),
    "c4-en-val": ("allenai/c4 English validation (secondary)",
                  "python prepare.py --dataset c4-val --out data/eval/c4-en-val"),
    "fineweb-edu-val": ("FineWeb-Edu held-out set", "prepare.py has no held-out FineWeb-Edu dataset yet: write "
                        "one with --all_val into data/eval/fineweb-edu-val"),
}
DOCUMENT_BOUNDARY = b"\xff"  # stands for a scored special token in the fingerprint; never occurs in UTF-8 text
# What results.json's eval.<id> holds. seq_len is the context the text was scored in (the windows' length): it
# changes the BPB, so leaderboard.py ranks together only BPBs scored at each run's training context.
RESULT_KEYS = ("bpb", "loss", "tokens", "bytes", "fingerprint", "seq_len")


# -----------------------------------------------------------------------------
# The metric

def _as_numpy_tokens(tokens) -> np.ndarray:
    if isinstance(tokens, torch.Tensor):
        return tokens.detach().cpu().numpy()
    return tokens  # np.ndarray or np.memmap: sliced lazily, never copied whole


def num_windows(n_tokens: int, seq_len: int) -> int:
    """Non-overlapping windows needed so that tokens 1..n-1 are each a target exactly once."""
    return math.ceil((n_tokens - 1) / seq_len) if n_tokens > 1 else 0


def fill_batch(tokens: np.ndarray, window_ids: list[int], seq_len: int, rows: int, width: int):
    """Inputs and targets (rows, width) int64 for the given windows (window w starts at w * seq_len; width
    is seq_len unless the stream is shorter). Rows past the windows and positions past the end of the
    stream are padding: input 0, target -1 (never scored). Padding always follows the real positions, so
    under causal attention it cannot change them."""
    x = np.zeros((rows, width), dtype=np.int64)
    y = np.full((rows, width), -1, dtype=np.int64)
    for row, w in enumerate(window_ids):
        start = w * seq_len
        chunk = np.asarray(tokens[start:start + seq_len + 1], dtype=np.int64)
        x[row, :len(chunk) - 1] = chunk[:-1]
        y[row, :len(chunk) - 1] = chunk[1:]
    return x, y


def check_token_range(tokens: np.ndarray, n_vocab: int, model_vocab: int | None) -> None:
    top = int(tokens.max())
    if top >= n_vocab:
        raise ValueError(f"token id {top} in the eval set is outside the tokenizer's {n_vocab} tokens: "
                         f"the eval tokens were made with a different tokenizer than token_bytes")
    if model_vocab is not None and n_vocab > model_vocab:
        raise ValueError(f"the tokenizer has {n_vocab} tokens but the model's vocab_size is {model_vocab}: "
                         f"evaluate with the tokenizer the model was trained with")


def bpb_from_sums(nats: float, n_bytes: int) -> float:
    return nats / (math.log(2) * n_bytes)


@torch.no_grad()
def evaluate_bpb(model, tokens, token_bytes, seq_len: int, batch_size: int, device,
                 max_tokens: int | None = None, progress: bool = False, enc=None,
                 amp_dtype: torch.dtype | None = torch.bfloat16) -> dict:
    """BPB of `model` on the token stream `tokens` (see the module docstring for the exact rules).

    model: called as model(idx, targets, reduction="none") -> per-token nats (B, T), as model.GPT does.
    token_bytes: UTF-8 byte length of each token id, 0 for special tokens (prepare.token_byte_lengths).
    max_tokens: evaluate only tokens[:max_tokens] (train.py's val_tokens).
    enc: the tiktoken Encoding of `tokens`; needed for the fingerprint (None without it).
    amp_dtype: the autocast dtype on CUDA (None = fp32: train.py passes its run's, so an fp32 run is validated,
    and its target_bpb judged, in fp32); CPU and MPS always evaluate in fp32.
    Returns {"bpb", "loss" (nats per scored token), "tokens" (scored), "bytes" (scored), "fingerprint",
    "seq_len" (the context: the windows' length)}, the same on every rank when torch.distributed is initialised.
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len ({seq_len}) and batch_size ({batch_size}) must be positive")
    device = torch.device(device)
    tokens = _as_numpy_tokens(tokens)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    if len(tokens) < 2:
        raise ValueError(f"the eval set has {len(tokens)} token(s): at least 2 are needed to predict one")
    token_bytes_np = np.asarray(token_bytes.cpu() if isinstance(token_bytes, torch.Tensor) else token_bytes,
                                dtype=np.int64)
    model_vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    check_token_range(tokens, len(token_bytes_np), model_vocab)

    # A DDP wrapper may sync buffers on each forward; ranks run different numbers of batches here.
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    my_windows = list(range(rank, num_windows(len(tokens), seq_len), world))
    # Batches are padded to one fixed shape (so a compiled model compiles once), but no larger than needed
    # when the whole set is shorter than one window or one batch.
    rows, width = min(batch_size, max(1, len(my_windows))), min(seq_len, len(tokens) - 1)

    # Sums stay on the device (no sync per batch); float64 where the device has it (MPS has not).
    acc_device = device if device.type == "cuda" else torch.device("cpu")
    nats_sum = torch.zeros((), dtype=torch.float64, device=acc_device)
    counts = torch.zeros(2, dtype=torch.int64, device=acc_device)  # [scored tokens, scored bytes]
    bytes_of = torch.from_numpy(token_bytes_np).to(device)

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(tokens) - 1, unit="tok", unit_scale=True, desc="eval bpb", disable=rank != 0)
    autocast = (torch.autocast("cuda", dtype=amp_dtype) if device.type == "cuda" and amp_dtype is not None
                else contextlib.nullcontext())
    try:
        for i in range(0, len(my_windows), rows):
            batch_windows = my_windows[i:i + rows]
            x, y = fill_batch(tokens, batch_windows, seq_len, rows, width)
            x = torch.from_numpy(x).to(device, non_blocking=True)
            y = torch.from_numpy(y).to(device, non_blocking=True)
            nbytes = torch.where(y >= 0, bytes_of[y.clamp(min=0)], 0)
            y = torch.where(nbytes > 0, y, -1)  # special tokens and padding: not scored
            with autocast:
                nats = model(x, y, reduction="none")
            nats = torch.where(y >= 0, nats.float(), 0.0)  # do not trust what a model puts at ignored positions
            # float64 from the batch sum on (MPS has no float64: its batch sums are float32, then accumulated in float64)
            batch_nats = nats.sum(dtype=torch.float64) if acc_device == device else nats.sum().to(acc_device)
            nats_sum += batch_nats.to(acc_device, torch.float64)
            counts += torch.stack([(y >= 0).sum(), nbytes.sum()]).to(acc_device)
            if bar is not None:
                # targets in this rank's windows, times world: an estimate of the global rate on rank 0
                bar.update(int(sum(min(seq_len, len(tokens) - 1 - w * seq_len) for w in batch_windows)) * world)
    finally:
        if bar is not None:
            bar.close()
        if was_training and hasattr(model, "train"):
            model.train()

    if distributed:
        reduce_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else acc_device
        nats_sum, counts = nats_sum.to(reduce_device), counts.to(reduce_device)
        dist.all_reduce(nats_sum)
        dist.all_reduce(counts)
    n_tokens, n_bytes = (int(c) for c in counts.tolist())
    nats = float(nats_sum)
    if n_bytes == 0:
        raise ValueError("the eval set holds no text tokens (only special tokens): nothing to score")
    return {
        "bpb": bpb_from_sums(nats, n_bytes),
        "loss": nats / n_tokens,
        "tokens": n_tokens,
        "bytes": n_bytes,
        "fingerprint": eval_fingerprint(tokens, token_bytes_np, enc) if enc is not None else None,
        "seq_len": seq_len,
    }


def eval_fingerprint(tokens, token_bytes, enc) -> str:
    """SHA-256 of the scored text: the bytes of tokens[1:] (every target), a 0xFF byte for each special
    token (a document boundary). Independent of the tokenizer for the same text. Pass tokens already
    cut to max_tokens."""
    targets = np.asarray(_as_numpy_tokens(tokens)[1:])
    special = np.flatnonzero(np.asarray(token_bytes)[targets] == 0)
    digest = hashlib.sha256()
    start = 0
    for s in special.tolist():  # decode the text between boundaries in one call each (tiktoken is fast in bulk)
        digest.update(enc.decode_bytes(targets[start:s].tolist()))
        digest.update(DOCUMENT_BOUNDARY)
        start = s + 1
    digest.update(enc.decode_bytes(targets[start:].tolist()))
    return digest.hexdigest()


# -----------------------------------------------------------------------------
# The eval set

def is_official(data: str) -> bool:
    """A name from OFFICIAL_EVAL_SETS (a folder of that name in the working directory wins)."""
    return data in OFFICIAL_EVAL_SETS and not pathlib.Path(data).exists()


def resolve_eval_data(data: str) -> tuple[str, pathlib.Path | list[pathlib.Path]]:
    """("dir", folder) for a prepared folder or an official eval set's name, ("text", [files]) for raw text."""
    path = pathlib.Path(data)
    if is_official(data):
        folder = EVAL_DIR / data
        if not folder.is_dir():
            about, how = OFFICIAL_EVAL_SETS[data]
            raise ValueError(f"the official eval set '{data}' ({about}) is not prepared: {folder} does not exist; "
                             f"make it with: {how}")
        return "dir", folder
    if path.is_dir():
        return "dir", path
    files = [pathlib.Path(p) for p in sorted(glob.glob(data))] if glob.has_magic(data) else [path]
    files = [f for f in files if f.is_file()]
    if not files:
        raise ValueError(f"--data {data}: no such folder, file or matching files, and not an official eval set "
                         f"({', '.join(OFFICIAL_EVAL_SETS)})")
    return "text", files


def default_eval_id(data: str) -> str | None:
    """The id a result is recorded under when --eval_id is not given: the official name, else the folder or
    file name; None for a glob (several files need a name chosen on purpose)."""
    if is_official(data):
        return data
    if glob.has_magic(data):
        return None
    path = pathlib.Path(data)
    return path.name if path.is_dir() else path.name.split(".")[0]


def tokenizer_mismatch(ckpt_spec: dict, data_spec: dict) -> str | None:
    """How the checkpoint's tokenizer differs from the one that wrote the shards, or None when they are one."""
    if ckpt_spec.get("name") != data_spec.get("name"):
        return f"the checkpoint's tokenizer is '{ckpt_spec.get('name')}', the shards' is '{data_spec.get('name')}'"
    for key in ("ranks", "pattern", "special_tokens"):
        if ckpt_spec.get(key) != data_spec.get(key):
            return (f"both tokenizers are '{data_spec.get('name')}' but their {key} differ "
                    f"(a BPE trained on other text)")
    return None


def load_shard_tokens(data_dir: pathlib.Path, enc, max_tokens: int | None) -> np.ndarray:
    meta_vocab = prepare.read_meta(data_dir).get("tokenizer", {}).get("vocab_size")
    if meta_vocab is not None and meta_vocab != enc.n_vocab:
        raise ValueError(f"tokenizer mismatch: {data_dir / 'meta.json'} says vocab_size {meta_vocab} but the "
                         f"tokenizer given has {enc.n_vocab} tokens; use the tokenizer the shards were made with")
    parts, have = [], 0
    for shard in prepare.list_shards(data_dir, "val"):
        if max_tokens is not None and have >= max_tokens:
            break
        tokens = prepare.open_shard(shard)
        if max_tokens is not None:
            tokens = tokens[:max_tokens - have]
        parts.append(tokens)
        have += len(tokens)
    # One shard: the memmap itself, never read whole. Several: eval sets are small enough to join.
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def load_text_tokens(files: list[pathlib.Path], enc, max_tokens: int | None) -> np.ndarray:
    """Raw text split into documents by prepare.py's own readers and cleaned as it cleans them (strip, drop
    empty, TinyStories' mojibake repaired for files named *tinystories*; no de-duplication: an eval set is
    scored as given), each document preceded by the delimiter as in prepare.py's shards."""
    delim = prepare.delimiter_id(enc)
    parts, have = [], 0
    for path in files:
        prepare.check_input_file(path)
        mojibake = prepare.default_mojibake([], [str(path)])
        for task in prepare.file_tasks(path):
            docs = [prepare.clean_document(d, mojibake)[0] for d in prepare.task_documents(task)]
            for ids in enc.encode_ordinary_batch([d for d in docs if d]):
                parts.append(np.array([delim] + ids, dtype=np.uint32))
                have += len(ids) + 1
                if max_tokens is not None and have >= max_tokens:
                    return np.concatenate(parts)[:max_tokens]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)


def retokenize(tokens: np.ndarray, from_enc, to_enc) -> np.ndarray:
    """The same documents in another tokenizer: decode each document with the tokenizer that wrote the
    shards and encode its text with `to_enc` (byte-level BPEs are lossless, so the text, and with it the
    bytes and the fingerprint, are unchanged)."""
    src_delim, dst_delim = prepare.delimiter_id(from_enc), prepare.delimiter_id(to_enc)
    starts = np.flatnonzero(np.asarray(tokens) == src_delim).tolist() + [len(tokens)]
    docs = [from_enc.decode_bytes(np.asarray(tokens[a + 1:b]).tolist()).decode("utf-8")
            for a, b in zip(starts[:-1], starts[1:])]
    return np.array([t for ids in to_enc.encode_ordinary_batch(docs) for t in [dst_delim, *ids]], dtype=np.uint32)


def load_eval_tokens(data_dir_or_glob, enc, max_tokens: int | None = None) -> np.ndarray:
    """The eval token stream: a prepared folder's val shards (or an official eval set by name), or raw
    text files tokenized with `enc`. At most max_tokens tokens."""
    kind, where = resolve_eval_data(str(data_dir_or_glob))
    tokens = load_shard_tokens(where, enc, max_tokens) if kind == "dir" else load_text_tokens(where, enc, max_tokens)
    if len(tokens) < 2:
        raise ValueError(f"the eval set {data_dir_or_glob} is empty ({len(tokens)} tokens): it holds no documents")
    return tokens


# -----------------------------------------------------------------------------
# The record and the command line

def check_recordable(eval_id: str | None, result: dict | None = None) -> None:
    """What results.json's eval.<eval_id> accepts, checked before the evaluation (the id) and after it (the
    numbers), so nothing leaderboard.py would refuse is written."""
    if not eval_id or not leaderboard.SAFE_NAME.fullmatch(eval_id):
        raise ValueError(f"the eval id {eval_id!r} is not a plain name (letters, digits, '.', '_', '-'): "
                         f"name the eval set for the record with --eval_id")
    if result is not None and not all(math.isfinite(result[k]) and result[k] > 0 for k in ("bpb", "loss")):
        raise ValueError(f"BPB is {result['bpb']}, not a positive finite number (NaN/inf losses?); nothing written")


def parse_args(argv):
    parser = common.ArgumentParser(
        prog="eval_bpb.py",
        description="Tokenizer-agnostic bits-per-byte of a checkpoint on an eval set (single process or torchrun).",
        epilog="Named eval sets: " + ", ".join(f"{k} ({v[0]})" for k, v in OFFICIAL_EVAL_SETS.items())
               + "; each lives in data/eval/<name>/, prepared by prepare.py.")
    parser.add_argument("--ckpt", required=True, help="checkpoint .pt written by train.py")
    parser.add_argument("--data", required=True,
                        help="official eval set name, a prepared folder (its val shards), or .txt/.jsonl file(s) / glob")
    parser.add_argument("--seq_len", type=common.parse_count, default=None,
                        help="context length (default: the checkpoint's block_size)")
    parser.add_argument("--max_tokens", type=common.parse_count, default=None, help="evaluate only the first N tokens of the set")
    parser.add_argument("--batch_size", type=common.parse_count, default=16, help="sequences per forward pass per process")
    parser.add_argument("--retokenize", action="store_true",
                        help="shards made with another tokenizer: decode their text and tokenize it with the "
                             "checkpoint's (automatic for the named official eval sets)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help="on CUDA: bf16 autocast or fp32 (auto: bf16 on a GPU with native bf16, as train.py); "
                             "CPU and MPS evaluate in fp32")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--record", default=None, help="record folder: write the result into its results.json")
    parser.add_argument("--eval_id", default=None, help="name under results.json's eval (default: the eval set's name)")
    args = parser.parse_args(argv)
    for name in ("seq_len", "max_tokens", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    return args


def eval_dtype(precision: str, device: torch.device, native_bf16: bool | None = None) -> torch.dtype | None:
    """The autocast dtype --precision asks for on `device` (None = fp32). native_bf16: the GPU's (None: ask it)."""
    if precision == "fp32" or device.type != "cuda":
        return None
    if precision == "bf16":
        return torch.bfloat16
    native = cuda_has_native_bf16(device) if native_bf16 is None else native_bf16
    return torch.bfloat16 if native else None


def run(argv) -> None:
    args = parse_args(argv)
    eval_id = args.eval_id or default_eval_id(args.data)
    if args.record:  # checked before the evaluation, so a typo costs no eval time
        check_recordable(eval_id)
        leaderboard.read_record(args.record)
    try:
        rank, world, device = common.setup_distributed(args.device)
    except ValueError as e:
        raise ValueError(f"--device: {e}") from None
    try:
        evaluate(args, eval_id, rank, world, device)
    finally:
        common.destroy_distributed()


def evaluate(args, eval_id, rank, world, device) -> None:
    """The evaluation run() asks for: printed on rank 0 and written into the record."""
    ckpt = load_checkpoint(args.ckpt)
    spec = ckpt["tokenizer"]
    enc = prepare.encoding_from_spec(spec)
    model = model_from_checkpoint(ckpt, device=device)
    block_size = model.config.block_size
    seq_len = args.seq_len or block_size
    if seq_len > block_size:
        raise ValueError(f"--seq_len {seq_len} is longer than the checkpoint's block_size {block_size}")
    kind, where = resolve_eval_data(args.data)
    data_spec = prepare.tokenizer_spec(where) if kind == "dir" else spec
    mismatch = tokenizer_mismatch(spec, data_spec)
    if mismatch and not (args.retokenize or is_official(args.data)):
        raise ValueError(f"tokenizer mismatch: {mismatch} ({where / 'meta.json'}); pass --retokenize to decode the "
                         f"shards' text and tokenize it with the checkpoint's tokenizer (same text, same fingerprint), "
                         f"or pass raw .txt/.jsonl files")
    if mismatch:
        if rank == 0:
            print(f"re-tokenizing {where} with the checkpoint's tokenizer ({mismatch})", file=sys.stderr)
        data_enc = prepare.encoding_from_spec(data_spec)
        tokens = retokenize(load_eval_tokens(where, data_enc), data_enc, enc)
    else:
        tokens = load_eval_tokens(args.data, enc, args.max_tokens)

    t0 = time.perf_counter()
    result = evaluate_bpb(model, tokens, prepare.token_byte_lengths(enc), seq_len, args.batch_size, device,
                          max_tokens=args.max_tokens, progress=rank == 0, enc=enc,
                          amp_dtype=eval_dtype(args.precision, device))
    seconds = time.perf_counter() - t0
    scored = min(len(tokens), args.max_tokens or len(tokens)) - 1  # positions run through the model
    if rank != 0:
        return
    if args.record:
        check_recordable(eval_id, result)
        leaderboard.update_record(args.record, f"eval.{eval_id}", {k: result[k] for k in RESULT_KEYS})
    if args.json:
        print(json.dumps({**result, "eval_id": eval_id, "seconds": round(seconds, 3),
                          "tokens_per_second": round(scored / seconds), "world_size": world}))
    else:
        print(f"eval {eval_id or args.data}: bpb {result['bpb']:.6f} | loss {result['loss']:.6f} nats/token | "
              f"{result['tokens']:,} tokens | {result['bytes']:,} bytes | seq_len {seq_len}")
        print(f"fingerprint {result['fingerprint']}")
        print(f"{seconds:.1f} s, {scored / seconds:,.0f} tokens/s on {device} x {world}")
        if args.record:
            print(f"written to {pathlib.Path(args.record) / 'results.json'} under eval.{eval_id}")


def main(argv=None) -> int:
    return common.run_main("eval_bpb.py", run, argv)


if __name__ == "__main__":
    sys.exit(main())
