"""
The leaderboard: read every record under records/, check it, and write the README tables.

    python leaderboard.py                      # validate records/, rewrite the README tables
    python leaderboard.py --check              # exit 1 if a record is invalid or the tables are stale (CI)
    python leaderboard.py --skip_invalid       # write the tables from the valid records, list the others
    python leaderboard.py --plot=records/frontier.svg   # also draw BPB vs model FLOPs (hand-written SVG)
    python leaderboard.py --serve 8000         # tables and plot on http://localhost:8000
    python leaderboard.py --records=DIR --readme=FILE   # other places (the tests use temporary ones)
    python leaderboard.py --export_marin records/fineweb-edu/<folder>   # the record in Marin's format, to submit there

Where records live (records/README.md tells participants the same):

    records/<track>/<folder>/results.json            one run, schema "speedrun-record/1" (train.py writes it)
    records/<track>/<folder>/train.log               the log of that run, beside its results.json
    records/<track>/<folder>/<sub>/results.json      several runs (seeds) of one record: one subfolder each
    records/<track>/<folder>/speedrun_results.json   Marin's format, {"runs": [{"run_info": {...}}, ...]} (beside a
                                                     results.json: its --export_marin copy, checked, not a 2nd run)

Primary evals: tinystories-valid for the TinyStories tracks; Paloma's C4-EN val split (eval id paloma-c4-en, what
Marin scores as eval/paloma/c4_en/bpb) for fineweb-edu and open, whose sections also show Marin's size tracks
(MARIN_SIZE_TRACKS: the runs that reached each threshold, fewest hardware FLOPs first). allenai/c4's validation
set (c4-en-val) is another text: a secondary eval.

Marin's files are read in every form Marin has written (see load_marin_record); Marin's figures are shown as
reported, recomputed only where the config maps exactly onto a model computed here, and where Marin's own
conventions explain a difference (TPU cores counted as devices, another architecture, an older FLOPs measure)
the row gets a note under its table instead of a refusal.

A record folder is one row of a table; when it holds several runs the row shows their mean BPB, the
spread and the one-sided t-test p-value of the mean against the runs' target (modded-nanogpt's rule).

What is checked (a mismatch beyond 1% is an error; counts must match exactly):
- every field of RECORD_FIELDS below, with its type and range: counts >= 1; seconds, FLOPs, BPB and loss
  > 0 and finite; MFU in (0, 1]; judge scores from 0 to 10; author.url http(s) or empty,
- folder names and eval ids are plain names (letters, digits, '.', '_', '-'), and no file of a record is a
  symbolic link that leads outside records/,
- training tokens = steps x batch_tokens (a count),
- model FLOPs = 3 x flops.forward_flops_per_token(model, seq_len) x tokens (Marin's convention),
- each eval's BPB = loss x tokens / (ln 2 x bytes) (to rounding: the four come from one evaluation), and the
  judge block's overall = the mean of its four category scores, inside its ci95,
- counted/unique/embedding params and the weight class, recounted by flops.count_params on model.GPT
  built on the meta device,
- hardware FLOPs = train_seconds x device_count x peak, the peak being flops.py's datasheet figure for a
  known device unless the record says it measured it; MFU = model FLOPs / hardware FLOPs,
- the sha256 of every source file in results.json's `code` block against the source that train.log
  holds and the sha256 it declares. train.log starts with the files that ran, as train.py writes them:

      ==================== train.py sha256=<64 hex digits> ====================
      <the file as it ran, plus a newline if it did not end with one>
      ==================== model.py sha256=<64 hex digits> ====================
      ...
      ==================== environment ====================

Exit codes: 0 fine, 1 invalid record(s) or stale tables, 2 bad command line or README without markers.
"""
import contextlib
import hashlib
import html
import http.server
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import urllib.parse

import prepare  # the option parser and the atomic writer; numpy only, no torch (flops.py and model.py are imported when needed)

ROOT = pathlib.Path(__file__).resolve().parent
SCHEMA = "speedrun-record/1"
TRACKS = ("tinystories", "tinystories-wiki", "fineweb-edu", "open")
TINYSTORIES_TRACKS = ("tinystories", "tinystories-wiki")
# The primary BPB of a run is every eval entry whose id, lower-cased with punctuation dropped, starts with this.
# Paloma's C4-EN (allenai/paloma, c4_en, val) is what Marin scores; allenai/c4's validation set (eval id c4-en-val)
# is another text and counts as a secondary eval.
PALOMA_EVAL_ID = "paloma-c4-en"
PALOMA_PREFIX = "palomac4en"
PRIMARY_EVAL_PREFIX = {"tinystories": "tinystories", "tinystories-wiki": "tinystories",
                       "fineweb-edu": PALOMA_PREFIX, "open": PALOMA_PREFIX}
PRIMARY_EVAL_NAME = {"tinystories": "TinyStories valid BPB", PALOMA_PREFIX: "Paloma C4-EN BPB"}
PRIMARY_EVAL_EXAMPLE = {"tinystories": "tinystories-valid", PALOMA_PREFIX: PALOMA_EVAL_ID}
# Marin's size tracks: the Paloma C4-EN BPB its reference Llamas reached; a run is listed under every threshold
# it reaches, ranked by hardware FLOPs (fewest first).
MARIN_SIZE_TRACKS = (("llama_30m", 1.5264), ("llama_75m", 1.2789), ("llama_300m", 1.1037), ("llama_1_4b", 0.9557))
# Folder names under records/ and eval ids: they become links and table titles, so plain names only.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")
TOLERANCE = 0.01  # recomputed figures may differ from the record's by at most 1%
EXACT = 1e-6       # figures computed from the record's own numbers (BPB from loss, tokens, bytes): rounding only
START_MARKER = "<!-- leaderboard:start -->"
END_MARKER = "<!-- leaderboard:end -->"
RESULTS_NAME = "results.json"
MARIN_NAME = "speedrun_results.json"
MAX_JSON_DEPTH = 64  # a record is a few levels deep; deeper nesting is refused before anything walks it

# Marin's records: the eval is Paloma's C4-EN, which carries no byte fingerprint, so they get their own.
MARIN_EVAL_ID = PALOMA_EVAL_ID
MARIN_FINGERPRINT = "marin-paloma-c4_en"
MARIN_BPB_KEY = "eval/paloma/c4_en/bpb"
MARIN_DEFAULT_VOCAB = 128_256  # "tokenizer": null in a Marin config means Marin's default, Llama 3's tokenizer


def invalid(path, field, problem) -> str:
    """One problem in one record, as listed: the file, the field, what is wrong."""
    return f"{display_path(path)}: {field}: {problem}"


def display_path(path):
    """Paths in messages: relative to the working directory when that is shorter; characters that could
    break the one-line message (newlines, control characters) written as escapes."""
    path = pathlib.Path(path)
    try:
        text = str(path.resolve().relative_to(pathlib.Path.cwd().resolve()))
    except ValueError:
        text = str(path)
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def check_track(track: str) -> str:
    """`track` when it is one of TRACKS, else a ValueError listing them (train.py's --track uses it too)."""
    if track not in TRACKS:
        raise ValueError(f"unknown track {track!r}; the tracks are {', '.join(TRACKS)}")
    return track


# ----------------------------------------------------------------------------------------------------
# Statistics: Student's t distribution without SciPy

def log_beta(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def beta_continued_fraction(a, b, x, max_iter=500, eps=1e-15):
    """Continued fraction for the incomplete beta function, modified Lentz's method (Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        # the even step of the recurrence
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        # the odd step
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(a, b, x):
    """I_x(a, b) = B(x; a, b) / B(a, b), for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - log_beta(a, b))
    # the continued fraction converges fast only for x < (a+1)/(a+b+2); use the symmetry otherwise
    if x < (a + 1.0) / (a + b + 2.0):
        return front * beta_continued_fraction(a, b, x) / a
    return 1.0 - front * beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t, df):
    """P(T <= t) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def mean_and_sd(values):
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def one_sided_p_below(values, target):
    """p-value of the one-sided t-test with H1: the mean of `values` is below `target` (needs 2+ values)."""
    n = len(values)
    if n < 2:
        return None
    mean, sd = mean_and_sd(values)
    if sd == 0.0:
        return 0.0 if mean < target else 1.0
    t = (target - mean) / (sd / math.sqrt(n))
    return 1.0 - student_t_cdf(t, n - 1)


# ----------------------------------------------------------------------------------------------------
# The Pareto frontier

def pareto_front(points):
    """points: list of (model_flops, bpb). True for each point no other point dominates, i.e. no other point
    has lower-or-equal FLOPs and lower-or-equal BPB with one of them strictly lower. O(n log n) sweep."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    on_front = [False] * len(points)
    best_bpb_so_far = math.inf  # the lowest BPB among strictly cheaper points
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and points[order[j]][0] == points[order[i]][0]:
            j += 1
        group_min = points[order[i]][1]  # sorted, so the first point of a FLOPs group has its lowest BPB
        if group_min < best_bpb_so_far:
            for k in order[i:j]:
                on_front[k] = points[k][1] == group_min  # equal twins dominate neither other
            best_bpb_so_far = group_min
        i = j
    return on_front


# ----------------------------------------------------------------------------------------------------
# Field access and type checks

def get_field(obj, dotted):
    """obj["a"]["b"] for "a.b"; KeyError when a part is missing."""
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(dotted)
        obj = obj[part]
    return obj


INT64 = 2 ** 63  # JSON allows any integer; a count past int64 (or a float past 1e308, read as inf) is no count


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and -INT64 < v < INT64


def is_number(v):
    return is_int(v) or (isinstance(v, float) and math.isfinite(v))


def is_http_url(v):
    return urllib.parse.urlsplit(v).scheme in ("http", "https") and "//" in v


# What each kind of field accepts, and how a problem says it. Ranges included: every figure a record carries
# is a count of at least 1, a positive amount, a fraction or a score, and a zero or a negative is refused.
TYPE_CHECKS = {"str": (lambda v: isinstance(v, str), "a string"),
               "int": (is_int, "an integer"),
               "count": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
               "number": (is_number, "a finite number"),
               "positive": (lambda v: is_number(v) and v > 0, "a finite number > 0"),
               "fraction": (lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
               "score": (lambda v: is_number(v) and 0 <= v <= 10, "a score from 0 to 10"),
               "sha256": (lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
                          "64 lower-case hex digits (a sha256)"),
               "url": (lambda v: isinstance(v, str) and (v == "" or is_http_url(v)), "an http(s) URL or \"\""),
               "bool": (lambda v: isinstance(v, bool), "true or false"),
               "dict": (lambda v: isinstance(v, dict), "an object"),
               "list": (lambda v: isinstance(v, list), "a list")}

# Field -> kind for a "speedrun-record/1" results.json. "?" = may be null or absent.
RECORD_FIELDS = {
    "schema": "str", "name": "str", "track": "str", "date": "str", "description": "str",
    "author": "dict", "author.name": "str", "author.affiliation": "str?", "author.url": "url?",
    "code": "dict", "code.sha256": "dict", "code.git_commit": "str?",
    "data": "dict", "data.dataset": "str?", "data.vocab_size": "count",
    "model": "dict",
    "params": "dict", "params.counted": "count", "params.unique": "count", "params.embedding": "int",
    "params.weight_class": "str",
    "training": "dict", "training.steps": "count", "training.tokens": "count", "training.batch_tokens": "count",
    "training.seq_len": "count", "training.seed": "int", "training.world_size": "count", "training.stopped_by": "str",
    "training.passes": "positive?", "training.planned_passes": "positive?", "training.best_step": "int?",
    "training.best_val_bpb": "positive?",
    "compute": "dict", "compute.flops_convention": "str", "compute.flops_per_token": "positive",
    "compute.model_flops": "positive", "compute.hardware_flops": "positive", "compute.mfu": "fraction",
    "compute.device": "str", "compute.device_count": "count", "compute.peak_flops_per_device": "positive",
    "compute.train_seconds": "positive",
    "eval": "dict", "target": "dict?", "judge": "dict?", "software": "dict",
}
EVAL_FIELDS = {"bpb": "positive", "loss": "positive", "tokens": "count", "bytes": "count", "fingerprint": "sha256"}
TARGET_FIELDS = {"metric": "str", "value": "positive", "reached": "bool", "seconds": "positive?"}
# the block judge.py writes: the four category means over the n judged items, their mean, and the 95% interval
# of the overall mean ([low, high], null for a single item)
JUDGE_FIELDS = {"judges": "list", "n": "count", "grammar": "score", "creativity": "score", "consistency": "score",
                "plot": "score", "overall": "score", "ci95": "list?"}
JUDGE_CATEGORIES = ("grammar", "creativity", "consistency", "plot")
MARIN_FIELDS = {
    MARIN_BPB_KEY: "positive", "model_flops": "positive", "model_size": "count", "total_tokens": "count",
    "training_time": "positive", "training_hardware_flops": "positive", "model_config": "dict",
    "run_completion_timestamp": "str", "author": "dict?", "description": "str?", "resources": "dict?",
}


def short_json(value):
    """A value as a problem message quotes it: JSON, at most 60 characters, on one line."""
    try:
        return json.dumps(value)[:60]
    except (ValueError, RecursionError):
        return type(value).__name__


def check_types(obj, fields, path, prefix=""):
    """Every problem (empty list when the object has the expected shape and its figures are in range)."""
    problems = []
    for field, kind in fields.items():
        optional = kind.endswith("?")
        kind = kind.rstrip("?")
        try:
            # Marin's keys hold slashes and no dots, so only our own fields are walked by dots
            value = obj[field] if "/" in field else get_field(obj, field)
        except (KeyError, TypeError):
            if not optional:
                problems.append(invalid(path, prefix + field, "missing"))
            continue
        if value is None and optional:
            continue
        accept, expected = TYPE_CHECKS[kind]
        if not accept(value):
            problems.append(invalid(path, prefix + field, f"expected {expected}, got {short_json(value)}"))
    return problems


def relative_gap(claimed, recomputed):
    return abs(claimed - recomputed) / max(abs(recomputed), 1e-300)


def check_close(path, field, claimed, recomputed, how):
    """A problem when `claimed` is more than 1% away from `recomputed`, else None."""
    gap = relative_gap(claimed, recomputed)
    if gap > TOLERANCE:
        return invalid(path, field, f"{claimed:.6g} but {how} gives {recomputed:.6g} (off by {100 * gap:.1f}%)")
    return None


# ----------------------------------------------------------------------------------------------------
# Recomputation through flops.py and model.py (imported lazily: torch is slow to import and an empty
# leaderboard needs neither)

_RECOUNTS = {}


def recount_params(model_config):
    """flops.count_params of model.GPT on the record's config, built on the meta device (no memory)."""
    key = json.dumps(model_config, sort_keys=True)
    if key not in _RECOUNTS:
        import torch
        import flops
        import model as model_lib
        config = model_lib.config_from_dict(model_config)  # ValueError on a field this repo's GPTConfig lacks
        with torch.device("meta"):
            _RECOUNTS[key] = flops.count_params(model_lib.GPT(config))
    return _RECOUNTS[key]


def datasheet_peak(device):
    """flops.py's peak for a device name (a table key or a GPU's name), or None when flops.py has no
    datasheet number for it."""
    import flops
    peak, _ = flops.device_peak_flops(device)
    return float(peak) if peak is not None else None


# ----------------------------------------------------------------------------------------------------
# train.log: the source blocks

# A file's block starts with its header line; it ends where the next "==== ... ====" line starts (the next
# file, or the "environment" section). train.py adds a newline to a source that lacks one, so a block's text
# is the file, or the file plus that newline: both are hashed.
SOURCE_HEADER = re.compile(rb"^={20} (?P<name>\S+) sha256=(?P<sha>[0-9a-f]{64}) ={20}\n", re.M)
SECTION_LINE = re.compile(rb"^={20} \S+( sha256=[0-9a-f]{64})? ={20}$", re.M)


def source_block(name, source: bytes) -> bytes:
    """One source block of train.log: a header line with the file's sha256, then the file (plus a newline
    when it lacks one)."""
    sha = hashlib.sha256(source).hexdigest()
    return f"{'=' * 20} {name} sha256={sha} {'=' * 20}\n".encode() + source + (b"" if source.endswith(b"\n") else b"\n")


def log_header(sources: dict[str, bytes]) -> str:
    """train.log's beginning: the full source of every project file that ran, each in a source_block whose
    sha256 is the one results.json's code.sha256 holds."""
    return b"".join(source_block(name, text) for name, text in sources.items()).decode("utf-8")


# ----------------------------------------------------------------------------------------------------
# What a record says of the run's code and software (train.py writes it into results.json and train.log)


def project_sources(first: str = "train.py") -> dict[str, bytes]:
    """The source of every file of this repository that is running (`first` first): the modules imported
    from the repository's folder, detected rather than listed, so an added file is logged too."""
    files = {ROOT / first}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not os.path.isabs(path):  # some extension modules fake a relative name
            continue
        path = pathlib.Path(path).resolve()
        if path.suffix == ".py" and path.is_file() and path.is_relative_to(ROOT) and "site-packages" not in path.parts \
                and path.relative_to(ROOT).parts[0] not in ("tests", ".venv"):
            files.add(path)
    ordered = sorted(files, key=lambda p: (p.name != first, str(p.relative_to(ROOT))))
    return {str(p.relative_to(ROOT)): p.read_bytes() for p in ordered}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def software_versions() -> dict:
    import platform
    import torch
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton_version}


def environment_lines(software: dict, device_name: str, world_size: int, cuda: bool) -> list[str]:
    """train.log's environment section: versions, devices, the command, and nvidia-smi on CUDA."""
    lines = [f"{'=' * 20} environment {'=' * 20}",
             " | ".join(f"{k} {v}" for k, v in software.items()),
             f"device {device_name} x {world_size}",
             f"command {' '.join(sys.argv)}"]
    if cuda:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20)
            lines += smi.stdout.rstrip().splitlines()
    return lines


# ----------------------------------------------------------------------------------------------------
# results.json: the one reader and the one writer (train.py writes it, eval_bpb.py and judge.py complete it)


def json_depth(obj) -> int:
    """How deeply lists and objects nest in `obj` (walked level by level: no recursion)."""
    depth, level = 0, [obj]
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        level = [v for o in level for v in (o.values() if isinstance(o, dict) else o) if isinstance(v, (dict, list))]
    return depth


def read_json(path) -> dict:
    """The JSON object in `path`, or a ValueError that names the file: not UTF-8, not JSON, an integer of
    thousands of digits, nesting deeper than MAX_JSON_DEPTH, or not an object. (Numbers past 1e308 read as
    inf, which the field checks refuse.)"""
    try:
        obj = json.loads(pathlib.Path(path).read_bytes().decode("utf-8"))
        if json_depth(obj) > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        reason = str(e).split(";")[0] if not isinstance(e, RecursionError) else "nested too deep"
        raise ValueError(f"{display_path(path)}: not a readable record ({reason}); fix or regenerate it") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{display_path(path)}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_record(record_dir) -> tuple[pathlib.Path, dict]:
    """(path of RECORD_DIR/results.json, its content), or a ValueError naming the file and the fix."""
    path = pathlib.Path(record_dir) / RESULTS_NAME
    if not path.is_file():
        raise ValueError(f"{path} does not exist: a record folder is one that train.py wrote")
    return path, read_json(path)


def write_results(out_dir, record: dict) -> pathlib.Path:
    """Write RECORD_DIR/results.json atomically (a crash leaves the old file or the new one)."""
    path = pathlib.Path(out_dir) / RESULTS_NAME
    prepare.write_json_atomic(path, record)
    return path


def update_record(record_dir, key: str, value) -> pathlib.Path:
    """Set one entry of an existing results.json and keep the rest: `key` is a dotted path ("judge",
    "eval.tinystories-valid"); missing or non-object parents become objects."""
    path, record = read_record(record_dir)
    *parents, last = key.split(".")
    node = record
    for name in parents:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    node[last] = value
    return write_results(record_dir, record)


def read_logged_sources(log_path):
    """{file name: (declared sha256, [candidate source bytes])} from train.log's source blocks."""
    data = pathlib.Path(log_path).read_bytes()
    sources = {}
    for m in SOURCE_HEADER.finditer(data):
        following = SECTION_LINE.search(data, m.end())
        block = data[m.end():following.start() if following else len(data)]
        candidates = [block] + ([block[:-1]] if block.endswith(b"\n") else [])
        sources[m["name"].decode()] = (m["sha"].decode(), candidates)
    return sources


def check_code_against_log(results_path, code):
    """results.json's code.sha256 {file: hex} against the sources in train.log and their declared hashes."""
    problems, hashes, field = [], code["sha256"], "code.sha256"
    if "train.py" not in hashes:
        return [invalid(results_path, f"{field}.train.py", "missing: the sha256 of the train.py that ran")]
    log_path = pathlib.Path(results_path).with_name("train.log")
    if not log_path.is_file():
        return [invalid(log_path, "train.log", "missing: every run's log goes beside its results.json")]
    logged = read_logged_sources(log_path)
    for name, claimed in sorted(hashes.items()):
        if not TYPE_CHECKS["sha256"][0](claimed):
            problems.append(invalid(results_path, f"{field}.{name}", "expected 64 lower-case hex digits"))
        elif name not in logged:
            problems.append(invalid(log_path, f"source {name}", "no source block for this file, which results.json lists"))
        else:
            declared, candidates = logged[name]
            hashes_of_text = [hashlib.sha256(text).hexdigest() for text in candidates]
            actual = declared if declared in hashes_of_text else hashes_of_text[0]
            if actual != declared:
                problems.append(invalid(log_path, f"source {name}", f"header says sha256 {declared[:12]}... but "
                                                                    f"the logged source hashes to {actual[:12]}..."))
            elif actual != claimed:
                problems.append(invalid(results_path, f"{field}.{name}",
                                        f"{claimed[:12]}... but the source in train.log hashes to {actual[:12]}..."))
    return problems


# ----------------------------------------------------------------------------------------------------
# Reading one record file into runs. A run is a plain dict with the fields the tables need.

def normalized_id(eval_id):
    """An eval id lower-cased with punctuation dropped: "Paloma-C4_EN" -> "palomac4en"."""
    return re.sub(r"[^a-z0-9]", "", eval_id.lower())


def primary_evals(track, evals):
    """[(eval id, bpb, fingerprint)] for the eval entries that count as the track's primary BPB."""
    prefix = PRIMARY_EVAL_PREFIX[track]
    return sorted((k, v["bpb"], v["fingerprint"]) for k, v in evals.items() if normalized_id(k).startswith(prefix))


def load_speedrun_record(path, track):
    """Validate a results.json of schema speedrun-record/1; return ([run], [problems])."""
    try:
        rec = read_json(path)
    except OSError as e:
        return [], [invalid(path, "(file)", f"cannot be read: {e.strerror}")]
    except ValueError as e:
        return [], [str(e)]
    if rec.get("schema") != SCHEMA:
        return [], [invalid(path, "schema", f"expected \"{SCHEMA}\", got {short_json(rec.get('schema'))}")]
    problems = check_types(rec, RECORD_FIELDS, path)
    for eval_id, entry in (rec["eval"] if isinstance(rec.get("eval"), dict) else {}).items():
        if not SAFE_NAME.fullmatch(eval_id):
            problems.append(invalid(path, "eval", f"the eval id {short_json(eval_id)} is not a plain name "
                                                  f"(letters, digits, '.', '_', '-'; it titles a table)"))
        elif not isinstance(entry, dict):
            problems.append(invalid(path, f"eval.{eval_id}", "expected an object"))
        else:
            problems += check_types(entry, EVAL_FIELDS, path, f"eval.{eval_id}.")
    if isinstance(rec.get("target"), dict):
        problems += check_types(rec["target"], TARGET_FIELDS, path, "target.")
    if isinstance(rec.get("judge"), dict):
        problems += check_types(rec["judge"], JUDGE_FIELDS, path, "judge.")
    if problems:
        return [], problems  # the recomputations below need the types right

    if rec["track"] != track:
        problems.append(invalid(path, "track", f"{short_json(rec['track'])} but the record sits in records/{track}/"))
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", rec["date"]):
        problems.append(invalid(path, "date", f"expected YYYY-MM-DD, got {short_json(rec['date'])}"))
    if rec["compute"]["flops_convention"] != "marin":
        problems.append(invalid(path, "compute.flops_convention", "expected \"marin\" (the project's one FLOPs convention)"))
    evals = primary_evals(track, rec["eval"])
    if not evals:
        example = PRIMARY_EVAL_EXAMPLE[PRIMARY_EVAL_PREFIX[track]]
        problems.append(invalid(path, "eval", f"no primary eval: track {track} needs an eval id like \"{example}\" "
                                              f"(python eval_bpb.py --data {example} --record ...; "
                                              f"has: {', '.join(rec['eval']) or 'none'})"))
    problems += recompute_speedrun_record(path, rec)
    problems += check_code_against_log(path, rec["code"])
    if problems:
        return [], problems

    compute, training, target, judge = rec["compute"], rec["training"], rec["target"], rec["judge"]
    run = {
        "file": pathlib.Path(path), "track": track, "format": SCHEMA, "name": rec["name"],
        "author": rec["author"]["name"], "date": rec["date"], "params": rec["params"]["counted"],
        "weight_class": rec["params"]["weight_class"], "tokens": training["tokens"],
        "model_flops": float(compute["model_flops"]), "hardware_flops": float(compute["hardware_flops"]),
        "seconds": float(compute["train_seconds"]), "hardware": f"{compute['device_count']}× {compute['device']}",
        "mfu": float(compute["mfu"]), "evals": evals,
        "target": target, "judge_overall": float(judge["overall"]) if judge else None, "notes": [],
    }
    return [run], []


def check_eval_entry(path, eval_id, entry):
    """BPB = loss x tokens / (ln 2 x bytes): loss is nats per scored token, so the three give the BPB again."""
    field = f"eval.{eval_id}"
    bpb = entry["loss"] * entry["tokens"] / (math.log(2) * entry["bytes"])
    if relative_gap(entry["bpb"], bpb) > EXACT:
        return [invalid(path, f"{field}.bpb", f"{entry['bpb']:.9g} but loss × tokens / (ln 2 × bytes) gives "
                                                    f"{bpb:.9g}; the four numbers come from one evaluation")]
    return []


def check_judge_block(path, judge):
    """The judge block as judge.py writes it: overall is the mean of the four category means (the same items),
    and the interval, when there is one, holds it."""
    problems = []
    if not judge["judges"] or not all(isinstance(j, str) for j in judge["judges"]):
        problems.append(invalid(path, "judge.judges", "expected a non-empty list of model names"))
    overall = sum(judge[c] for c in JUDGE_CATEGORIES) / len(JUDGE_CATEGORIES)
    if abs(judge["overall"] - overall) > EXACT * max(1.0, abs(overall)):
        problems.append(invalid(path, "judge.overall", f"{judge['overall']:.6g} but the mean of the four "
                                                             f"category scores is {overall:.6g}"))
    ci = judge.get("ci95")
    if ci is not None and not (len(ci) == 2 and all(is_number(v) for v in ci) and ci[0] <= judge["overall"] <= ci[1]):
        problems.append(invalid(path, "judge.ci95", f"expected [low, high] around overall, got {short_json(ci)}"))
    return problems


def recompute_speedrun_record(path, rec):
    """Everything in the record that can be computed again from its own config, compared to what it says."""
    import flops
    problems = []
    model_config, training, compute, params = rec["model"], rec["training"], rec["compute"], rec["params"]
    for eval_id, entry in rec["eval"].items():
        problems += check_eval_entry(path, eval_id, entry)
    if rec["judge"] is not None:
        problems += check_judge_block(path, rec["judge"])

    if training["tokens"] != training["steps"] * training["batch_tokens"]:  # a count: exact, as train.py counts it
        problems.append(invalid(path, "training.tokens", f"{training['tokens']:,} but training.steps × "
                                      f"training.batch_tokens is {training['steps'] * training['batch_tokens']:,}"))
    try:
        forward = flops.forward_flops_per_token(model_config, training["seq_len"])
    except (TypeError, KeyError, ValueError) as e:
        return [invalid(path, "model", f"flops.py cannot read this config ({e})")]
    problems.append(check_close(path, "compute.flops_per_token", compute["flops_per_token"], forward,
                                f"flops.forward_flops_per_token(model, seq_len={training['seq_len']})"))
    problems.append(check_close(path, "compute.model_flops", compute["model_flops"], 3 * forward * training["tokens"],
                                "3 × forward FLOPs/token × training.tokens"))

    try:
        counts = recount_params(model_config)
    except (TypeError, ValueError) as e:
        return [p for p in problems if p] + [invalid(path, "model", f"not a GPTConfig of this repo's model.py ({e})")]
    for key in ("counted", "unique", "embedding"):
        if params[key] != counts[key]:
            problems.append(invalid(path, f"params.{key}", f"{params[key]:,} but flops.count_params "
                                                                 f"on the model config gives {counts[key]:,}"))
    expected_class = flops.weight_class(counts["counted"])
    if params["weight_class"] != expected_class:
        problems.append(invalid(path, "params.weight_class", f"\"{params['weight_class']}\" but "
                                      f"{counts['counted']:,} counted params are class \"{expected_class}\""))

    peak = compute["peak_flops_per_device"]
    measured = compute.get("peak_flops_source") == "measured"
    known = datasheet_peak(compute["device"])
    if known is None and not measured:
        problems.append(invalid(path, "compute.peak_flops_per_device", f"flops.py has no datasheet peak for "
                                      f"{short_json(compute['device'])}: measure it and set compute.peak_flops_source to \"measured\""))
    elif known is not None and not measured:
        problems.append(check_close(path, "compute.peak_flops_per_device", peak, known,
                                    f"flops.py's datasheet peak for {compute['device']}"))
    problems.append(check_close(path, "compute.hardware_flops", compute["hardware_flops"],
                                compute["train_seconds"] * compute["device_count"] * peak,
                                "train_seconds × device_count × peak_flops_per_device"))
    problems.append(check_close(path, "compute.mfu", compute["mfu"], compute["model_flops"] / compute["hardware_flops"],
                                "model_flops / hardware_flops"))
    return [p for p in problems if p]


# ----------------------------------------------------------------------------------------------------
# Marin's speedrun_results.json, in every form Marin has written it:
#   current  {"runs": [{"run_info": {model_size, model_flops, training_hardware_flops, training_time (s),
#            resources, ...; later also num_devices, num_chips, device_flops, model_flops_per_token}}]}
#   older    {"runs": [{"run_related_info": {num_parameters, total_tokens, hardware_config, model_config,
#            train_config: {resources: {accelerator_type, gpu_count}}, ...},
#            "run_stats": {eval/paloma/c4_en/bpb, total_training_flops, training_time_in_minutes, ...}}]}
# Resources come as {tpu_type, slice_count}, {accelerator_type, gpu_count} or {device: {kind, variant, count}};
# the sequence length as seq_len or max_seq_len. Marin's own figures are shown as Marin reported them. A figure is
# recomputed only where the config maps exactly onto a model this repository computes (a plain Llama, or our
# own GPTConfig as --export_marin writes it); where Marin's own conventions explain a difference (TPU cores
# counted as devices, a non-Llama architecture, an older FLOPs measure) the row carries a note. A file is
# refused only when it is malformed (a field missing or of the wrong type) or its figures contradict each other
# under every convention Marin has used.

MARIN_EXTRA_FIELDS = {"num_devices": "count?", "num_chips": "count?", "device_flops": "positive?",
                      "model_flops_per_token": "positive?", "train_config": "dict?", "tokenized_dataset": "str?",
                      "wandb_run_link": "str?"}
MARIN_OLD_INFO_FIELDS = {"model_config": "dict", "num_parameters": "count", "total_tokens": "count",
                         "run_completion_timestamp": "str", "hardware_config": "dict?", "train_config": "dict?",
                         "author": "dict?", "description": "str?", "tokenized_dataset": "str?", "wandb_run_link": "str?"}
MARIN_OLD_STATS_FIELDS = {MARIN_BPB_KEY: "positive", "training_time_in_minutes": "positive",
                          "total_training_flops": "positive?", "pre_run_flops_estimate": "positive?"}
MARIN_HARDWARE_FIELDS = {"device_flops": "positive?", "device_type": "str?", "num_devices": "count?"}
MARIN_SEQ_KEYS = ("seq_len", "max_seq_len")
# Levanter's Llama config: the keys a plain Llama has. Feature switches are plain only when off (false/null/0).
MARIN_LLAMA_KEYS = {"activation_function", "attn_backend", "cross_entropy_block_size", "flash_attention_block_size",
                    "gradient_checkpointing", "head_dim", "hidden_dim", "initializer_range", "intermediate_dim",
                    "layer_norm_epsilon", "num_heads", "num_kv_heads", "num_layers", "reference_checkpoint", "rope",
                    "scan_layers", "seq_len", "max_seq_len", "tie_word_embeddings", "tokenizer", "upcast_attn",
                    "use_flash_attention", "use_layer_norm_weight", "sliding_window"}
MARIN_FEATURES = {"use_gated_deltanet": "Gated DeltaNet", "use_gated_attention": "gated attention",
                  "gated_attention": "gated attention", "use_attention_sink": "attention sinks",
                  "use_qk_norm": "QK norm", "qk_norm": "QK norm", "use_sliding_window": "sliding-window attention",
                  "hybrid_norm": "hybrid norm", "input_embedding_norm": "input embedding norm", "use_bias": "biases"}
# TPU type "v5p-32": the number counts TensorCores; v4 and v5p have two per chip, v5e and v6e one.
TPU_CORES_PER_CHIP = {"v2": 2, "v3": 2, "v4": 2, "v5p": 2, "v5e": 1, "v5litepod": 1, "v6e": 1}


def marin_features(model_config):
    """What keeps a Marin config from being a plain Llama: [feature names] (empty for a plain Llama)."""
    found = []
    for key, value in model_config.items():
        if key in MARIN_FEATURES:
            if value not in (None, False, 0):
                found.append(MARIN_FEATURES[key])
        elif key not in MARIN_LLAMA_KEYS:
            found.append(f"field {key}")
    if model_config.get("activation_function", "silu") != "silu":
        found.append(f"activation {model_config['activation_function']}")
    if any(name.startswith("field ") for name in found) and any(not name.startswith("field ") for name in found):
        found = [name for name in found if not name.startswith("field ")]  # named features say enough
    return sorted(set(found), key=found.index)


def marin_seq_len(model_config, path, prefix):
    """(seq_len or None, problems): Marin writes seq_len or max_seq_len; a present one must be a count."""
    for key in MARIN_SEQ_KEYS:
        if key in model_config and model_config[key] is not None:
            if not TYPE_CHECKS["count"][0](model_config[key]):
                return None, [invalid(path, f"{prefix}model_config.{key}", f"expected an integer >= 1, "
                                                                            f"got {short_json(model_config[key])}")]
            return model_config[key], []
    return None, []


def marin_config_as_gpt(model_config):
    """Marin's (Levanter's) Llama config as this repo's GPTConfig fields, whatever its extra switches, or None
    when its shape is not a Llama's (no hidden_dim ..., a head_dim that is not hidden/heads, another tokenizer)."""
    needed = ("hidden_dim", "intermediate_dim", "num_layers", "num_heads", "num_kv_heads")
    if not all(is_int(model_config.get(k)) and model_config[k] >= 1 for k in needed):
        return None
    d, heads = model_config["hidden_dim"], model_config["num_heads"]
    if model_config.get("head_dim") not in (None, d // heads) or d % heads:
        return None
    if model_config.get("tokenizer") is not None:
        return None  # only the default tokenizer's vocabulary size is known here
    return {"vocab_size": MARIN_DEFAULT_VOCAB, "n_layer": model_config["num_layers"], "n_head": heads,
            "n_kv_head": model_config["num_kv_heads"], "n_embd": d, "mlp": "swiglu",
            "mlp_ratio": model_config["intermediate_dim"] / d,
            "tie_embeddings": bool(model_config.get("tie_word_embeddings", False))}


def our_config_in_marin(model_config):
    """The GPTConfig dict that --export_marin writes as model_config (our fields plus seq_len), or None."""
    import model as model_lib
    ours = {k: v for k, v in model_config.items() if k not in MARIN_SEQ_KEYS}
    if not {"n_layer", "n_embd", "vocab_size"} <= set(ours):
        return None
    try:
        model_lib.config_from_dict(ours)
    except (TypeError, ValueError):
        return None
    return ours


def tpu_devices(tpu_type, slices):
    """("TPU v5p", TensorCores, chips) for a TPU type such as "v5p-32" (times the slice count), or None."""
    m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", tpu_type or "")
    if not m or m.group(1) not in TPU_CORES_PER_CHIP:
        return None
    slices = max(slices) if isinstance(slices, list) and slices else slices
    slices = slices if is_int(slices) and slices >= 1 else 1
    cores = int(m.group(2)) * slices
    kind = "v5e" if m.group(1) == "v5litepod" else m.group(1)
    return f"TPU {kind}", cores, max(1, cores // TPU_CORES_PER_CHIP[m.group(1)])


def device_name(name):
    """A device name as the tables show it: Marin's short lower-case ones ("a100", "h100") upper-cased."""
    if not isinstance(name, str) or not name:
        return None
    return name.upper() if re.fullmatch(r"[a-z]\d+[a-z]?", name) else name


def marin_hardware(info, resources, hardware_config):
    """(device name or None, [(count, what it counts)], [(peak FLOP/s per device, where it comes from)]) from every
    place Marin has put them: resources {tpu_type, slice_count} / {accelerator_type, gpu_count} /
    {device: {kind, variant, count}}, the older hardware_config, and num_devices / num_chips / device_flops."""
    resources = resources if isinstance(resources, dict) else {}
    hardware_config = hardware_config if isinstance(hardware_config, dict) else {}
    device, counts, peaks = None, [], []
    spec = resources.get("device") if isinstance(resources.get("device"), dict) else {}
    if isinstance(resources.get("tpu_type"), str):
        tpu = tpu_devices(resources["tpu_type"], resources.get("slice_count"))
    elif spec.get("kind") == "tpu" and isinstance(spec.get("variant"), str):
        tpu = tpu_devices(spec["variant"], resources.get("replicas"))  # replicas: the slices
    else:
        tpu = None
    if tpu:
        device, cores, chips = tpu
        counts += [(chips, "chips")] + ([(cores, "TPU cores")] if cores != chips else [])
    elif spec:
        variant, kind = spec.get("variant"), spec.get("kind")
        generic = kind.upper() if kind in ("gpu", "cpu") else str(kind or "device")  # variant "auto": the kind only
        device = variant if isinstance(variant, str) and variant not in ("", "auto") else generic
        if is_int(spec.get("count")) and spec["count"] >= 1:
            counts.append((spec["count"], "devices"))
    elif isinstance(resources.get("accelerator_type"), str) or is_int(resources.get("gpu_count")):
        device = device_name(resources.get("accelerator_type") or hardware_config.get("device_type"))
        if is_int(resources.get("gpu_count")) and resources["gpu_count"] >= 1:
            counts.append((resources["gpu_count"], "GPUs"))
    if device is None and isinstance(hardware_config.get("device_type"), str):
        device = device_name(hardware_config["device_type"])
    for key, what in (("num_chips", "chips"), ("num_devices", "devices")):
        for source in (info, hardware_config):
            n = source.get(key)
            if is_int(n) and n >= 1 and n not in [c for c, _ in counts]:
                counts.append((n, what))
    for source, key, what in ((info, "device_flops", "Marin's device_flops"),
                              (hardware_config, "device_flops", "Marin's device_flops"),
                              (resources, "device_flops_override", "Marin's device_flops_override")):
        if is_number(source.get(key)) and source[key] > 0 and float(source[key]) not in [p for p, _ in peaks]:
            peaks.append((float(source[key]), what))
    known = datasheet_peak(device) if device else None
    if known is not None and known not in [p for p, _ in peaks]:
        peaks.append((known, f"the {device} datasheet peak"))
    return device, counts, peaks


def marin_fields(entry, path, i):
    """One entry of "runs" in Marin's current or older form, as one dict of what the tables need
    (the figures as Marin wrote them, None where that form has none), or (None, problems)."""
    if not isinstance(entry, dict):
        return None, [invalid(path, f"runs[{i}]", "expected an object")]
    if isinstance(entry.get("run_info"), dict):
        info, prefix = entry["run_info"], f"runs[{i}].run_info."
        problems = check_types(info, MARIN_FIELDS, path, prefix) + check_types(info, MARIN_EXTRA_FIELDS, path, prefix)
        if problems:
            return None, problems
        fields = {"form": "run_info", "prefix": prefix, "info": info, "bpb": float(info[MARIN_BPB_KEY]),
                  "model_flops": float(info["model_flops"]), "params": info["model_size"],
                  "tokens": info["total_tokens"], "seconds": float(info["training_time"]),
                  "hardware_flops": float(info["training_hardware_flops"]), "hardware_config": None,
                  "resources": info.get("resources")}
    elif isinstance(entry.get("run_related_info"), dict) or "run_stats" in entry:
        info, stats = entry.get("run_related_info"), entry.get("run_stats")
        prefix = f"runs[{i}].run_related_info."
        if not isinstance(info, dict) or not isinstance(stats, dict):
            missing = "run_related_info" if not isinstance(info, dict) else "run_stats"
            return None, [invalid(path, f"runs[{i}].{missing}", "missing: the older form has both run_related_info "
                                                              "and run_stats")]
        problems = check_types(info, MARIN_OLD_INFO_FIELDS, path, prefix)
        problems += check_types(stats, MARIN_OLD_STATS_FIELDS, path, f"runs[{i}].run_stats.")
        if isinstance(info.get("hardware_config"), dict):
            problems += check_types(info["hardware_config"], MARIN_HARDWARE_FIELDS, path, prefix + "hardware_config.")
        if problems:
            return None, problems
        train_config = info.get("train_config") or {}
        fields = {"form": "run_related_info", "prefix": prefix, "info": info, "stats": stats,
                  "bpb": float(stats[MARIN_BPB_KEY]), "model_flops": None, "params": info["num_parameters"],
                  "tokens": info["total_tokens"], "seconds": 60.0 * stats["training_time_in_minutes"],
                  "hardware_flops": None, "hardware_config": info.get("hardware_config"),
                  "resources": train_config.get("resources") if isinstance(train_config, dict) else None}
    else:
        return None, [invalid(path, f"runs[{i}]", "expected run_info (Marin's current form) or run_related_info "
                                                  "with run_stats (its older form)")]
    seq_len, problems = marin_seq_len(fields["info"]["model_config"], path, prefix)
    fields["seq_len"], fields["index"] = seq_len, i
    return (None, problems) if problems else (fields, [])


def check_marin_model_flops(path, f, notes):
    """Model FLOPs: Marin's as reported, checked where the config maps exactly; (model FLOPs, problems)."""
    import flops
    config, prefix, reported = f["info"]["model_config"], f["prefix"], f["model_flops"]
    ours = our_config_in_marin(config)
    llama = marin_config_as_gpt(config) if ours is None else None
    features = marin_features(config) if ours is None else []
    recomputed = None
    if f["seq_len"] is not None and (ours is not None or llama is not None):
        recomputed = 3.0 * flops.forward_flops_per_token(ours or llama, f["seq_len"]) * f["tokens"]
    if f["form"] == "run_related_info":  # older files: total_training_flops measured otherwise
        stats = f["stats"]
        key = next((k for k in ("total_training_flops", "pre_run_flops_estimate") if stats.get(k)), None)
        if recomputed is not None and not features:
            if key:
                notes.append(f"model FLOPs 3 × forward FLOPs/token × tokens = {fmt_sci(recomputed)}; Marin's older "
                             f"file reports {key} {fmt_sci(stats[key])}, measured another way")
            return recomputed, []
        if key:
            notes.append(f"model FLOPs: Marin's older {key} {fmt_sci(stats[key])}, as reported")
            return float(stats[key]), []
        return None, [invalid(path, f"runs[{f['index']}].run_stats.total_training_flops",
                              "missing, and the config is not one whose FLOPs can be computed here")]
    problems = []
    per_token = f["info"].get("model_flops_per_token")
    if per_token is not None and relative_gap(reported, 3 * per_token * f["tokens"]) > TOLERANCE:
        notes.append(f"model_flops {fmt_sci(reported)} is not 3 × model_flops_per_token × total_tokens "
                     f"({fmt_sci(3 * per_token * f['tokens'])}); shown as reported")
    if recomputed is None:
        return reported, problems
    if features:  # another architecture: Marin's figure stands; the Llama of the same shape shown beside it
        if relative_gap(reported, recomputed) > TOLERANCE:
            notes.append(f"{', '.join(features)}: not a plain Llama; model FLOPs as Marin reported them (a plain "
                         f"Llama of this shape: {fmt_sci(recomputed)}, {100 * (recomputed / reported - 1):+.0f}%)")
        return reported, problems
    how = ("3 × forward FLOPs/token (this repository's model config) × total_tokens" if ours is not None
           else "3 × forward FLOPs/token (Llama config) × total_tokens")
    problem = check_close(path, prefix + "model_flops", reported, recomputed, how)
    return reported, [problem] if problem else []


def check_marin_hardware(path, f, notes):
    """(hardware FLOPs, device shown, problems). Marin's figure is kept; it must be training_time × devices × peak
    under one of the ways Marin counted devices; TPU cores counted as devices get a note."""
    device, counts, peaks = marin_hardware(f["info"], f["resources"], f["hardware_config"])
    seconds, reported, prefix = f["seconds"], f["hardware_flops"], f["prefix"]
    shown = lambda n: f"{n}× {device}" if device else f"{n}× device" if n else "—"
    if reported is None:  # the older form: Marin's time × devices × device_flops
        if not counts or not peaks:
            return None, device or "—", []
        (n, _), (peak, where) = counts[0], peaks[0]
        hardware = seconds * n * peak
        known = datasheet_peak(device) if device else None
        if known is not None and relative_gap(peak, known) > TOLERANCE:
            notes.append(f"hardware FLOPs from {where} {fmt_sci(peak)} per device; the {device} bf16 datasheet "
                         f"peak {fmt_sci(known)} would give {fmt_sci(seconds * n * known)}")
        return hardware, shown(n), []
    candidates = [(n, what, peak, where) for n, what in counts for peak, where in peaks]
    for n, what, peak, where in candidates:
        if relative_gap(reported, seconds * n * peak) <= TOLERANCE:
            chips = next((c for c, w in counts if w == "chips"), None)
            if what == "TPU cores" and chips:
                notes.append(f"Marin counted the {n} TPU cores as devices at the per-chip peak; per chip ({chips}) "
                             f"the hardware FLOPs would be {fmt_sci(seconds * chips * peak)}")
            return reported, shown(n), []
    if not candidates:
        return reported, shown(counts[0][0] if counts else None), []
    tried = "; ".join(f"{n} {what} × {fmt_sci(peak)} gives {fmt_sci(seconds * n * peak)}" for n, what, peak, _ in candidates[:4])
    return reported, shown(counts[0][0]), [invalid(path, prefix + "training_hardware_flops",
                                                    f"{reported:.6g} but training_time × devices × peak matches no "
                                                    f"way Marin counts devices ({tried})")]


def load_marin_record(path, track, folder_name):
    """Validate a Marin speedrun_results.json; return (runs, problems)."""
    import flops
    try:
        data = read_json(path)
    except OSError as e:
        return [], [invalid(path, "(file)", f"cannot be read: {e.strerror}")]
    except ValueError as e:
        return [], [str(e)]
    if not isinstance(data.get("runs"), list) or not data["runs"]:
        return [], [invalid(path, "runs", "expected {\"runs\": [{\"run_info\": {...}}, ...]} with at least one run")]
    runs, problems = [], []
    for i, entry in enumerate(data["runs"]):
        f, found = marin_fields(entry, path, i)
        if found:
            problems += found
            continue
        notes = []
        model_flops, found = check_marin_model_flops(path, f, notes)
        hardware_flops, hardware, more = check_marin_hardware(path, f, notes)
        found += more
        if model_flops is not None and hardware_flops is not None and model_flops > hardware_flops * (1 + TOLERANCE):
            field = "training_hardware_flops" if f["form"] == "run_info" else "(hardware FLOPs)"
            found.append(invalid(path, f["prefix"] + field, "below model_flops: an MFU above 100%"))
        if found:
            problems += found
            continue
        info = f["info"]
        author = info.get("author") or {}
        runs.append({
            "file": pathlib.Path(path), "track": track, "format": "marin",
            "name": folder_name if len(data["runs"]) == 1 else f"{folder_name}#{i}",
            "author": author.get("name") if isinstance(author.get("name"), str) else "—",
            "date": info["run_completion_timestamp"][:10], "params": f["params"],
            "weight_class": flops.weight_class(f["params"]), "tokens": f["tokens"],
            "model_flops": model_flops, "hardware_flops": hardware_flops,
            "seconds": f["seconds"], "hardware": hardware,
            "mfu": model_flops / hardware_flops if model_flops and hardware_flops else None,
            "evals": [(MARIN_EVAL_ID, f["bpb"], MARIN_FINGERPRINT)],
            "target": None, "judge_overall": None, "notes": notes,
        })
    return runs, problems


# ----------------------------------------------------------------------------------------------------
# --export_marin: a record in Marin's current run_info form, so it can be submitted to Marin's speedrun

def paloma_eval(rec):
    """(eval id, entry) of the record's Paloma C4-EN eval: the id paloma-c4-en, else the first whose id starts
    with it (ignoring case and punctuation); None when there is none."""
    evals = rec.get("eval") if isinstance(rec.get("eval"), dict) else {}
    ids = sorted(k for k, v in evals.items() if normalized_id(k).startswith(PALOMA_PREFIX) and isinstance(v, dict))
    if not ids:
        return None
    eval_id = PALOMA_EVAL_ID if PALOMA_EVAL_ID in ids else ids[0]
    return eval_id, evals[eval_id]


def marin_run_info(rec, record_path) -> dict:
    """A speedrun-record/1 record as Marin's run_info (every figure the record's own), or a ValueError naming
    what is missing."""
    found = paloma_eval(rec)
    if found is None:
        names = ", ".join(sorted(rec.get("eval") or {})) or "none"
        raise ValueError(f"{display_path(record_path)}: no Paloma C4-EN eval (eval ids: {names}); Marin scores "
                         f"{MARIN_BPB_KEY}: run python eval_bpb.py --ckpt CKPT --data {PALOMA_EVAL_ID} "
                         f"--record {display_path(pathlib.Path(record_path).parent)} first")
    problems = check_types(rec, RECORD_FIELDS, record_path) + check_types(found[1], EVAL_FIELDS, record_path,
                                                                          f"eval.{found[0]}.")
    if problems:
        raise ValueError(problems[0])
    compute, training, author = rec["compute"], rec["training"], rec["author"]
    device = compute["device"]
    kind = "cpu" if device.lower().startswith("cpu") else "tpu" if device.startswith("TPU") else "gpu"
    return {
        "author": {"name": author["name"], "affiliation": author.get("affiliation"), "url": author.get("url")},
        "description": rec["description"],
        MARIN_BPB_KEY: found[1]["bpb"],
        "device_flops": compute["peak_flops_per_device"],
        "model_config": {**rec["model"], "seq_len": training["seq_len"]},
        "model_flops": compute["model_flops"],
        "model_flops_per_token": compute["flops_per_token"],
        "model_size": rec["params"]["counted"],
        "num_chips": compute["device_count"],
        "num_devices": compute["device_count"],
        "resources": {"device": {"kind": kind, "variant": device, "count": compute["device_count"]}},
        "run_completion_timestamp": f"{rec['date']} 00:00:00 UTC",
        "tokenized_dataset": (rec.get("data") or {}).get("dataset"),
        "total_tokens": training["tokens"],
        "train_config": {"num_train_steps": training["steps"], "train_batch_size": training["batch_tokens"] // training["seq_len"],
                         "train_seq_len": training["seq_len"], "batch_tokens": training["batch_tokens"],
                         "seed": training["seed"], "world_size": training["world_size"],
                         "stopped_by": training["stopped_by"], "hyperparameters": rec.get("hyperparameters")},
        "training_hardware_flops": compute["hardware_flops"],
        "training_time": compute["train_seconds"],
        "wandb_run_link": rec.get("wandb_run_link"),
    }


def export_marin(record_dir) -> pathlib.Path:
    """Write RECORD_DIR/speedrun_results.json from RECORD_DIR/results.json (atomically)."""
    path, rec = read_record(record_dir)
    if rec.get("schema") != SCHEMA:
        raise ValueError(f"{display_path(path)}: schema {short_json(rec.get('schema'))}, expected \"{SCHEMA}\"")
    out = pathlib.Path(record_dir) / MARIN_NAME
    prepare.write_json_atomic(out, {"runs": [{"run_info": marin_run_info(rec, path)}]})
    return out


def check_marin_export(path):
    """A speedrun_results.json beside a results.json is that record exported by --export_marin: it must still say
    what results.json says (else it is stale)."""
    try:
        rec = read_json(path.parent / RESULTS_NAME)
        exported = read_json(path)
        if exported != {"runs": [{"run_info": json.loads(json.dumps(marin_run_info(rec, path.parent / RESULTS_NAME)))}]}:
            return [invalid(path, "runs", f"differs from the {RESULTS_NAME} beside it; re-run "
                                          f"python leaderboard.py --export_marin {display_path(path.parent)}")]
    except ValueError as e:
        return [invalid(path, "(export)", f"cannot be checked against {RESULTS_NAME}: {e}")]
    except OSError as e:
        return [invalid(path, "(file)", f"cannot be read: {e.strerror}")]
    return []


# ----------------------------------------------------------------------------------------------------
# Reading all of records/

def find_record_files(records_dir):
    """Every results.json / speedrun_results.json under records_dir, sorted, so the output never depends on
    the order the file system lists them."""
    records_dir = pathlib.Path(records_dir)
    found = [p for p in records_dir.rglob("*") if p.name in (RESULTS_NAME, MARIN_NAME) and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(records_dir).as_posix())


def location_problem(records_dir, path):
    """Why a record file cannot be read where it is, or None: the track folder, the folder names (plain
    names: they become links), and no file that leads outside records/ through a symbolic link."""
    parts = path.relative_to(records_dir).parts
    if len(parts) < 3:
        return invalid(path, "(location)", "a record goes in records/<track>/<folder>/")
    if parts[0] not in TRACKS:
        return invalid(path, "(location)", f"unknown track folder {short_json(parts[0])}; tracks: {', '.join(TRACKS)}")
    for name in parts[1:-1]:
        if not SAFE_NAME.fullmatch(name):
            return invalid(path, "(location)", f"folder name {short_json(name)}: use letters, digits, '.', '_' and "
                                               f"'-' (at most 120, starting with a letter or digit)")
    root = records_dir.resolve()
    for file in (path, path.with_name("train.log"), records_dir / parts[0] / parts[1] / "README.md"):
        try:
            target = file.resolve()
        except (OSError, RuntimeError):  # a loop of links
            target = None
        if (file.is_symlink() or file.exists()) and not (target and target.is_relative_to(root)):
            return invalid(file, "(location)", f"a symbolic link that leads outside {display_path(records_dir)}; "
                                               f"put the file itself in the record")
    return None


def load_records(records_dir):
    """(runs, problems) over the whole records folder. Each run gets "folder": its record folder. A record
    folder with any problem (in any of its runs, or no README.md) gives no run at all."""
    records_dir = pathlib.Path(records_dir)
    if not records_dir.is_dir():
        raise ValueError(f"records folder {records_dir} does not exist; pass --records=DIR")
    runs, problems, invalid_folders, without_readme = [], [], set(), set()
    for path in find_record_files(records_dir):
        wrong_place = location_problem(records_dir, path)
        if wrong_place:
            problems.append(wrong_place)
            continue
        track, name = path.relative_to(records_dir).parts[:2]
        folder = records_dir / track / name
        if path.name == MARIN_NAME and (path.parent / RESULTS_NAME).is_file():
            found, bad = [], check_marin_export(path)  # --export_marin's copy of the run beside it: not a second run
        elif path.name == MARIN_NAME:
            found, bad = load_marin_record(path, track, name)
        else:
            found, bad = load_speedrun_record(path, track)
        if not (folder / "README.md").is_file() and folder not in without_readme:
            without_readme.add(folder)
            bad.append(invalid(folder / "README.md", "README.md", "missing: say what changed, the command "
                                                                  "that reproduces the run and its results (records/README.md)"))
        if bad:
            invalid_folders.add(folder)
        for run in found:
            run["folder"] = folder
        runs += found
        problems += bad
    return [r for r in runs if r["folder"] not in invalid_folders], problems


# ----------------------------------------------------------------------------------------------------
# Tables: one per (track, eval id, fingerprint); one row per record folder

def make_row(folder, runs, link):
    """A record folder's runs (all on the same eval data) as one table row."""
    bpbs = [r["bpb"] for r in runs]
    bpb, spread = mean_and_sd(bpbs)
    targets = {r["target"]["value"] for r in runs if r["target"]}
    target = targets.pop() if len(targets) == 1 and all(r["target"] for r in runs) else None
    reached = [r for r in runs if r["target"] and r["target"]["reached"] and r["target"].get("seconds") is not None]
    judged = [r["judge_overall"] for r in runs if r["judge_overall"] is not None]
    mfus = [r["mfu"] for r in runs if r["mfu"] is not None]
    first = min(runs, key=lambda r: r["file"].as_posix())
    return {
        "folder": folder.name, "link": link, "author": first["author"], "date": max(r["date"] for r in runs),
        "params": max(r["params"] for r in runs), "weight_class": first["weight_class"],
        "tokens": sum(r["tokens"] for r in runs) / len(runs),
        "model_flops": sum(r["model_flops"] for r in runs) / len(runs),
        "hardware_flops": (sum(r["hardware_flops"] for r in runs) / len(runs)
                           if all(r["hardware_flops"] is not None for r in runs) else None),
        # each note once, in the runs' order; a run of several gets its name in front
        "notes": list(dict.fromkeys((f"{r['name']}: {n}" if len(runs) > 1 else n) for r in runs for n in r.get("notes", ()))),
        "seconds": sum(r["seconds"] for r in runs) / len(runs),
        "hardware": " / ".join(sorted({r["hardware"] for r in runs})),
        "mfu": sum(mfus) / len(mfus) if mfus else None,
        "bpb": bpb, "spread": spread, "n": len(runs), "target": target,
        "p_value": one_sided_p_below(bpbs, target) if target is not None else None,
        "judge": sum(judged) / len(judged) if judged else None,
        # time to target counts only when every run reached the same target
        "target_seconds": (mean_and_sd([r["target"]["seconds"] for r in reached])
                           if target is not None and len(reached) == len(runs) else None),
        "target_metric": first["target"]["metric"] if first["target"] else None,
    }


def build_tables(runs, link_base):
    """[{track, eval_id, fingerprint, rows}] sorted by track then eval id; rows ranked, Pareto marked."""
    groups = {}
    for run in runs:
        for eval_id, bpb, fingerprint in run["evals"]:
            key = (run["track"], eval_id, fingerprint)
            groups.setdefault(key, {}).setdefault(run["folder"], []).append(dict(run, bpb=bpb))
    tables = []
    for (track, eval_id, fingerprint), by_folder in groups.items():
        rows = [make_row(folder, folder_runs, pathlib.Path(os.path.relpath(folder, link_base)).as_posix())
                for folder, folder_runs in by_folder.items()]
        rows.sort(key=lambda r: (r["bpb"], r["model_flops"], r["date"], r["folder"]))
        for rank, (row, star) in enumerate(zip(rows, pareto_front([(r["model_flops"], r["bpb"]) for r in rows])), 1):
            row["rank"], row["pareto"] = rank, star
        tables.append({"track": track, "eval_id": eval_id, "fingerprint": fingerprint, "rows": rows})
    tables.sort(key=lambda t: (TRACKS.index(t["track"]), t["eval_id"], t["fingerprint"]))
    return tables


# ----------------------------------------------------------------------------------------------------
# Escaping: every text that comes from a record reaches the README, the served page and the plot through
# `escape`, and every link through `link`, so a record cannot add rows, hide rows, break the markers or link
# anywhere but to http(s) and to this repository.

LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MARKDOWN_SYNTAX = re.compile(r"([\\`|\[\]])")


def escape(text, markdown=True) -> str:
    """`text` as inert text on one line: control characters and line breaks become spaces (no new table row),
    `<`, `>` and `&` become entities (no HTML, no `<!--` comment, no marker line); for Markdown, also a
    backslash before `\\`, `` ` ``, `|`, `[` and `]` (no new cell, no link, no code span)."""
    text = LINE_BREAKING.sub(" ", str(text))
    if not markdown:
        return html.escape(text)
    return MARKDOWN_SYNTAX.sub(r"\\\1", html.escape(text, quote=False))


def link(text, target) -> str:
    """A Markdown link to a path in this repository or to an http(s) URL; any other scheme is refused."""
    scheme = urllib.parse.urlsplit(target).scheme
    if scheme not in ("", "http", "https"):
        raise ValueError(f"refusing a {scheme!r} link: only http(s) and relative links")
    return f"[{escape(text)}]({urllib.parse.quote(target, safe='/:?#=&%._~-')})"


def weight_class_names():
    import flops
    return [name for name, _ in flops.WEIGHT_CLASSES] + ["open"]


# ----------------------------------------------------------------------------------------------------
# Formatting

def fmt_count(n):
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:.0f}"


def fmt_sci(x):
    if x <= 0:
        return "0"
    exponent = math.floor(math.log10(x))
    mantissa = x / 10 ** exponent
    if round(mantissa, 2) >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:.2f}e{exponent}"


def fmt_seconds(s):
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def fmt_bpb(row):
    if row["n"] == 1:
        return f"{row['bpb']:.4f}"
    return f"{row['bpb']:.4f} ± {row['spread']:.4f} (n={row['n']})"


def fmt_p(p):
    if p is None:
        return "—"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def short_fingerprint(fingerprint):
    """A hash's head is enough to tell eval sets apart; other fingerprints (Marin's) are shown whole."""
    return fingerprint[:16] if re.fullmatch(r"[0-9a-f]{17,}", fingerprint) else fingerprint


def table_title(table, markdown=True):
    kind = PRIMARY_EVAL_NAME[PRIMARY_EVAL_PREFIX[table["track"]]]
    eval_id, fingerprint = escape(table["eval_id"], markdown), escape(short_fingerprint(table["fingerprint"]), markdown)
    code = "`" if markdown else ""
    return f"{table['track']} · {kind} ({code}{eval_id}{code}, eval data {code}{fingerprint}{code})"


MAIN_COLUMNS = ["#", "run", "author", "date", "params (class)", "tokens", "model FLOPs", "hardware", "time",
                "MFU", "BPB", "p vs target", "judge", "Pareto"]


def main_table_cells(row):
    return [str(row["rank"]), (row["folder"], row["link"]), row["author"], row["date"],
            f"{fmt_count(row['params'])} ({row['weight_class']})", fmt_count(row["tokens"]), fmt_sci(row["model_flops"]),
            row["hardware"], fmt_seconds(row["seconds"]), f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "—",
            fmt_bpb(row), fmt_p(row["p_value"]) + (f" (< {row['target']})" if row["p_value"] is not None else ""),
            f"{row['judge']:.2f}" if row["judge"] is not None else "—", "★" if row["pareto"] else ""]


def table_views(table):
    """[(heading, columns, rows of cells)]: the ranking, the per-weight-class view, the time-to-target view."""
    views = [(None, MAIN_COLUMNS, [main_table_cells(r) for r in table["rows"]])]
    if table["track"] in TINYSTORIES_TRACKS:
        cells = []
        for cls in weight_class_names():
            in_class = [r for r in table["rows"] if r["weight_class"] == cls]
            cells += [[cls, str(i), (r["folder"], r["link"]), f"{fmt_count(r['params'])}", fmt_bpb(r),
                       f"{r['judge']:.2f}" if r["judge"] is not None else "—"] for i, r in enumerate(in_class, 1)]
        views.append(("By weight class", ["class", "#", "run", "params", "BPB", "judge"], cells))
    timed = [r for r in table["rows"] if r["target_seconds"] is not None]
    if timed:
        timed.sort(key=lambda r: (r["hardware"], r["target_metric"], r["target"], r["target_seconds"][0], r["folder"]))
        cells = []
        for r in timed:
            mean, sd = r["target_seconds"]
            time = fmt_seconds(mean) + (f" ± {fmt_seconds(sd)}" if r["n"] > 1 else "")
            cells.append([r["hardware"], f"{r['target_metric']} ≤ {r['target']}", (r["folder"], r["link"]), time,
                          str(r["n"]), fmt_p(r["p_value"])])
        views.append(("Time to target (fastest first, by hardware)", ["hardware", "target", "run", "time", "runs", "p"], cells))
    return views


def table_notes(table):
    """[(folder, link, note)]: what a row's figures mean where they follow Marin's own conventions."""
    return [(r["folder"], r["link"], note) for r in table["rows"] for note in r["notes"]]


SIZE_TRACK_HEADING = ("Marin's size tracks: runs that reached each Paloma C4-EN BPB threshold, fewest hardware "
                      "FLOPs first (the run's total: the FLOPs to reach the threshold are at most that)")
SIZE_TRACK_COLUMNS = ["size track", "threshold", "#", "run", "eval data", "BPB", "hardware FLOPs", "hardware", "params"]


def size_track_cells(track_tables):
    """The size-track view of one track: every row of its Paloma C4-EN tables (ours and Marin's) under each
    threshold it reaches; None when the track has no Paloma C4-EN table."""
    rows = [(t, r) for t in track_tables if normalized_id(t["eval_id"]).startswith(PALOMA_PREFIX) for r in t["rows"]]
    if not rows:
        return None
    cells = []
    for name, threshold in MARIN_SIZE_TRACKS:
        reached = sorted(((t, r) for t, r in rows if r["bpb"] <= threshold and r["hardware_flops"] is not None),
                         key=lambda tr: (tr[1]["hardware_flops"], tr[1]["bpb"], tr[1]["folder"]))
        cells += [[name, f"{threshold:.4f}", str(i), (r["folder"], r["link"]), short_fingerprint(t["fingerprint"]),
                   fmt_bpb(r), fmt_sci(r["hardware_flops"]), r["hardware"], fmt_count(r["params"])]
                  for i, (t, r) in enumerate(reached, 1)]
    return cells


def markdown_cell(cell):
    """A cell: text, or a (text, target) pair for a link."""
    return link(*cell) if isinstance(cell, tuple) else escape(cell)


def markdown_table(columns, cells):
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in cells]
    return "\n".join(lines)


def render_markdown(tables, problems=(), how_to_submit="records/README.md"):
    """The text between the README markers (no markers). Deterministic: the same records give the same bytes."""
    out = ["<!-- generated by `python leaderboard.py` from records/: edit the records, not this section -->", ""]
    for track in TRACKS:
        track_tables = [t for t in tables if t["track"] == track]
        if not track_tables:
            out += [f"### {track}", "", f"No records yet: see {link('records/README.md', how_to_submit)} to submit one.", ""]
        for table in track_tables:
            out += [f"### {table_title(table)}", ""]
            for heading, columns, cells in table_views(table):
                if heading:
                    out += [f"**{heading}**", ""]
                out += [markdown_table(columns, cells), ""]
            notes = table_notes(table)
            if notes:
                out += ["**Notes** (Marin's own conventions: shown as Marin reported them)", ""]
                out += [f"- {link(folder, target)}: {escape(note)}" for folder, target, note in notes] + [""]
        cells = size_track_cells(track_tables)
        if cells is not None:
            out += [f"#### {track} · {SIZE_TRACK_HEADING}", ""]
            out += [markdown_table(SIZE_TRACK_COLUMNS, cells) if cells else "No run has reached a threshold yet.", ""]
    if problems:
        out += ["**Not listed: invalid records**", ""] + [f"- {escape(p)}" for p in problems] + [""]
    return "\n".join(out).rstrip("\n")


def splice_readme(text, section, readme_path):
    """The README with the text between the markers replaced; everything else byte-identical."""
    starts, ends = text.count(START_MARKER), text.count(END_MARKER)
    if starts != 1 or ends != 1 or text.index(START_MARKER) > text.index(END_MARKER):
        raise ValueError(f"{readme_path} needs exactly one '{START_MARKER}' line followed by one "
                               f"'{END_MARKER}' line (found {starts} and {ends}); add them where the tables go")
    head, rest = text.split(START_MARKER)
    _, tail = rest.split(END_MARKER)
    return f"{head}{START_MARKER}\n{section}\n{END_MARKER}{tail}"


# ----------------------------------------------------------------------------------------------------
# The picture: BPB against model FLOPs (log x), one panel per table, hand-written SVG

CLASS_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a")  # the weight classes in order, open last
PANEL_W, PANEL_H, MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 720, 300, 70, 130, 40, 45


def render_svg(tables):
    """An SVG document (str): a panel per table, points coloured by weight class, the frontier joined."""
    height = max(1, len(tables)) * PANEL_H
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{PANEL_W}" height="{height}" '
           f'viewBox="0 0 {PANEL_W} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{PANEL_W}" height="{height}" fill="white"/>']
    if not tables:
        out.append(f'<text x="{PANEL_W / 2}" y="{PANEL_H / 2}" text-anchor="middle">No records yet</text>')
    for i, table in enumerate(tables):
        out += svg_panel(table, i * PANEL_H)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def svg_panel(table, y0):
    rows = table["rows"]
    x_lo = math.floor(math.log10(min(r["model_flops"] for r in rows)))
    x_hi = max(x_lo + 1, math.ceil(math.log10(max(r["model_flops"] for r in rows))))
    b_lo, b_hi = min(r["bpb"] - r["spread"] for r in rows), max(r["bpb"] + r["spread"] for r in rows)
    pad = max(0.05 * (b_hi - b_lo), 0.01)
    b_lo, b_hi = b_lo - pad, b_hi + pad
    left, right, top, bottom = MARGIN_L, PANEL_W - MARGIN_R, y0 + MARGIN_T, y0 + PANEL_H - MARGIN_B
    colours = dict(zip(weight_class_names(), CLASS_COLOURS))

    def x_of(flops):
        return left + (math.log10(flops) - x_lo) / (x_hi - x_lo) * (right - left)

    def y_of(bpb):
        return bottom - (bpb - b_lo) / (b_hi - b_lo) * (bottom - top)

    out = [f'<text x="12" y="{y0 + 22}" font-size="13" font-weight="bold">{table_title(table, markdown=False)}</text>',
           f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#888"/>']
    for e in range(x_lo, x_hi + 1):  # a tick per decade
        x = x_of(10.0 ** e)
        out.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#888"/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">1e{e}</text>')
    for k in range(5):
        b = b_lo + k * (b_hi - b_lo) / 4
        out.append(f'<text x="{left - 6}" y="{y_of(b) + 4:.1f}" text-anchor="end">{b:.3f}</text>')
    out.append(f'<text x="{(left + right) / 2}" y="{bottom + 34}" text-anchor="middle">model FLOPs (log scale)</text>')
    out.append(f'<text x="16" y="{(top + bottom) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {(top + bottom) / 2})">BPB</text>')
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["model_flops"])
    if len(front) > 1:
        points = " ".join(f"{x_of(r['model_flops']):.1f},{y_of(r['bpb']):.1f}" for r in front)
        out.append(f'<polyline class="frontier" points="{points}" fill="none" stroke="#444" stroke-dasharray="4 3"/>')
    for r in rows:
        x, y = x_of(r["model_flops"]), y_of(r["bpb"])
        colour = colours.get(r["weight_class"], "#999")
        if r["n"] > 1:  # the seeds' spread, +- one standard deviation
            out.append(f'<line class="spread" x1="{x:.1f}" y1="{y_of(r["bpb"] - r["spread"]):.1f}" x2="{x:.1f}" '
                       f'y2="{y_of(r["bpb"] + r["spread"]):.1f}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}" stroke="black" stroke-width="{1.5 if r["pareto"] else 0.5}">'
                   f'<title>{escape(r["folder"], markdown=False)}: BPB {r["bpb"]:.4f}, {fmt_sci(r["model_flops"])} FLOPs</title></circle>')
        out.append(f'<text x="{x + 7:.1f}" y="{y - 6:.1f}" font-size="9">{escape(r["folder"], markdown=False)}</text>')
    for k, (cls, colour) in enumerate(colours.items()):  # the legend
        ly = top + 10 + 16 * k
        out.append(f'<circle cx="{right + 16}" cy="{ly}" r="5" fill="{colour}"/>')
        out.append(f'<text x="{right + 26}" y="{ly + 4}">{cls}</text>')
    out.append(f'<line x1="{right + 10}" y1="{top + 78}" x2="{right + 24}" y2="{top + 78}" stroke="#444" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{right + 28}" y="{top + 82}">Pareto frontier</text>')
    return out


# ----------------------------------------------------------------------------------------------------
# --serve: the tables as HTML and the plot, on localhost

def html_table(columns, cells):
    def cell(c):
        return escape(c[0] if isinstance(c, tuple) else c, markdown=False)
    head = "".join(f"<th>{escape(c, markdown=False)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(tables, problems=()):
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Speedrun leaderboard</title><style>"
             "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head><body>",
             "<h1>Speedrun leaderboard</h1>", "<p><img src='/frontier.svg' alt='BPB vs model FLOPs'></p>"]
    for track in TRACKS:
        track_tables = [t for t in tables if t["track"] == track]
        if not track_tables:
            parts.append(f"<h2>{track}</h2><p>No records yet.</p>")
        for table in track_tables:
            parts.append(f"<h2>{table_title(table, markdown=False)}</h2>")
            for heading, columns, cells in table_views(table):
                parts.append((f"<h3>{escape(heading, markdown=False)}</h3>" if heading else "") + html_table(columns, cells))
            notes = table_notes(table)
            if notes:
                parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{escape(folder, markdown=False)}: {escape(note, markdown=False)}</li>"
                                                            for folder, _, note in notes) + "</ul>")
        cells = size_track_cells(track_tables)
        if cells is not None:
            parts.append(f"<h3>{escape(track + ' · ' + SIZE_TRACK_HEADING, markdown=False)}</h3>" +
                         (html_table(SIZE_TRACK_COLUMNS, cells) if cells else "<p>No run has reached a threshold yet.</p>"))
    if problems:
        parts.append("<h2>Invalid records (not listed)</h2><ul>" +
                     "".join(f"<li>{escape(p, markdown=False)}</li>" for p in problems) + "</ul>")
    return "".join(parts) + "</body></html>"


def make_server(records_dir, link_base, port):
    """An HTTP server on 127.0.0.1 that reads records/ afresh on every request (call serve_forever)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            runs, problems = load_records(records_dir)
            tables = build_tables(runs, link_base)
            if self.path in ("/", "/index.html"):
                body, kind = render_html(tables, problems).encode(), "text/html; charset=utf-8"
            elif self.path == "/frontier.svg":
                body, kind = render_svg(tables).encode(), "image/svg+xml"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass  # quiet: one line per request is noise here

    return http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)


# ----------------------------------------------------------------------------------------------------
# Command line

def parse_args(argv):
    p = prepare.ArgumentParser(prog="leaderboard.py", epilog=__doc__.split("Exit codes")[0],
                               description="Validate records/ and write the leaderboard tables into the README.")
    p.add_argument("--records", default=str(ROOT / "records"), help="records folder (default: records/ beside this file)")
    p.add_argument("--readme", default=str(ROOT / "README.md"), help="README holding the leaderboard markers")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a record is invalid or the tables are stale")
    p.add_argument("--skip_invalid", action="store_true", help="write the tables from the valid records and list the others")
    p.add_argument("--export_marin", metavar="RECORD_DIR",
                   help="write RECORD_DIR/speedrun_results.json, the record in Marin's run_info form (needs its "
                        f"{PALOMA_EVAL_ID} eval), and change nothing else")
    p.add_argument("--plot", metavar="FILE.svg", help="also write the BPB vs model FLOPs plot (with --check: check it is current)")
    # --serve stays: it shows a record's row and plot point before it is committed, with nothing to install
    p.add_argument("--serve", nargs="?", const=8000, type=prepare.parse_count, metavar="PORT",
                   help="serve tables and plot on localhost (default port 8000)")
    return p.parse_args(argv)


def run(argv):
    args = parse_args(argv)
    readme = pathlib.Path(args.readme)
    if args.export_marin is not None:
        out = export_marin(args.export_marin)
        print(f"wrote {out}: submit it to Marin with the run (experiments/speedrun/<run name>/{MARIN_NAME})")
        return 0
    if args.serve is not None:
        server = make_server(args.records, readme.parent, args.serve)
        print(f"serving the leaderboard on http://localhost:{server.server_address[1]} (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        return 0
    runs, problems = load_records(args.records)
    if problems and (args.check or not args.skip_invalid):
        for p in problems:
            print(f"invalid: {p}", file=sys.stderr)
        print(f"error: {len(problems)} problem(s) in records; nothing written", file=sys.stderr)
        return 1
    tables = build_tables(runs, readme.parent)
    try:
        with readme.open(encoding="utf-8", newline="") as f:  # newline="": keep CRLF and the rest byte-identical
            old = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read README {readme}: {getattr(e, 'strerror', None) or e}; pass --readme=FILE") from None
    how_to_submit = pathlib.Path(os.path.relpath(pathlib.Path(args.records) / "README.md", readme.parent)).as_posix()
    new = splice_readme(old, render_markdown(tables, problems, how_to_submit), readme)
    svg = render_svg(tables) if args.plot else None
    n_rows = sum(len(t["rows"]) for t in tables)
    if args.check:
        stale = [str(readme)] if new != old else []
        if args.plot and (not pathlib.Path(args.plot).is_file() or pathlib.Path(args.plot).read_bytes() != svg.encode("utf-8")):
            stale.append(args.plot)
        if stale:
            print(f"error: leaderboard out of date in {', '.join(stale)}; run python leaderboard.py"
                  f"{' --plot=' + args.plot if args.plot else ''} and commit the result", file=sys.stderr)
            return 1
        print(f"ok: {len(runs)} run(s) in {n_rows} row(s), all valid; {readme} is up to date")
        return 0
    if new != old:
        prepare.write_file_atomic(readme, new.encode("utf-8"))  # newlines as read: a CRLF README stays CRLF
    if svg is not None:
        prepare.write_file_atomic(args.plot, svg.encode("utf-8"))
    for p in problems:
        print(f"skipped invalid: {p}", file=sys.stderr)
    print(f"{len(runs)} run(s) in {n_rows} row(s) across {len(tables)} table(s); "
          f"{readme} {'updated' if new != old else 'already up to date'}" + (f"; plot in {args.plot}" if svg else ""))
    return 0


def main(argv=None):
    return prepare.run_main("leaderboard.py", run, argv)


if __name__ == "__main__":
    sys.exit(main())
