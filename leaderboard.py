"""
The leaderboard: read every record under records/, check it, and write the README tables.

    python leaderboard.py                      # validate records/, rewrite the README tables
    python leaderboard.py --check              # exit 1 if a record is invalid or the tables are stale (CI)
    python leaderboard.py --skip_invalid       # write the tables from the valid records, list the others
    python leaderboard.py --plot=records/frontier.svg   # also draw BPB vs model FLOPs (hand-written SVG)
    python leaderboard.py --serve 8000         # the page of --html on http://localhost:8000
    python leaderboard.py --html DIR           # the static site: DIR/index.html, assets/leaderboard.js, frontier.svg
    python leaderboard.py --json FILE          # every table and view as data
    python leaderboard.py --marin_runs runs.json [--x=hardware]   # Marin's site data beside ours, its views printed
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
the row gets a note under its table instead of a refusal. Figures that contradict each other (or that nothing
recomputes and that are below a tenth of 6 x params x tokens) flag the row: shown, ranked apart.

Marin's site views (its leaderboard at github.com/marin-community/speedrun): All runs over model or hardware
FLOPs, Scaling (a power law with an offset per group of runs, the site's Levenberg-Marquardt ported, beside the
converged least-squares fit and the leave-one-out range of its forecast), and relative to the AdamW-Llama
baseline; for Marin's runs.json (--marin_runs) and for our records that declare a sweep (train.py --sweep).

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
  known device unless the record says it measured it (then within MEASURED_PEAK_FACTOR below the datasheet
  figure); MFU = model FLOPs / hardware FLOPs,
- a target against train.log: the value its budget line names, reached only by the validation logged at the
  last step, in the run's training seconds (check_target_against_log),
- each eval's seq_len (the context it was scored at) within the model's block_size; BPBs at each run's
  training context are ranked together, another context gets its own table,
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
import functools
import hashlib
import html
import http.server
import json
import math
import os
import pathlib
import re
import statistics
import subprocess
import sys
import urllib.parse

import common

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
# A peak a record measured on a device that has a datasheet peak: at least 1/MEASURED_PEAK_FACTOR of it (a bf16
# matmul reaches 60-90% of the datasheet figure) and not above it. train.py measures only devices without one.
MEASURED_PEAK_FACTOR = 2
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
# Statistics: Student's t distribution, hand-written on purpose: the standard library has no t distribution,
# and SciPy would be a large dependency for one p-value (tests check it against the closed form at df = 2).

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
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value). The standard
    library's mean and stdev sum exactly (as fractions), so no finite values (up to 1e308) overflow."""
    return float(statistics.mean(values)), float(statistics.stdev(values)) if len(values) > 1 else 0.0


def mean(values):
    """The mean of finite values, without overflow: sum(values) of two 1e308s is inf."""
    return mean_and_sd(values)[0]


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
    "eval": "dict", "target": "dict?", "judge": "dict?", "software": "dict", "sweep": "str?",
}
# seq_len: the context the text was scored in (eval_bpb records it); an entry written before it was recorded was
# scored at the record's training.seq_len (the block_size train.py gives the model, eval_bpb's default context).
# BPBs are ranked together when scored at each run's training context; an eval at another context is tabled apart.
EVAL_FIELDS = {"bpb": "positive", "loss": "positive", "tokens": "count", "bytes": "count", "fingerprint": "sha256",
               "seq_len": "count?"}
TARGET_FIELDS = {"metric": "str", "value": "positive", "reached": "bool", "seconds": "positive?"}
# the block judge.py writes: the four category means over the n judged items, their mean, and the 95% interval
# of the overall mean ([low, high], null for a single item)
JUDGE_FIELDS = {"judges": "list", "n": "count", "grammar": "score", "creativity": "score", "consistency": "score",
                "plot": "score", "overall": "score", "ci95": "list?"}
JUDGE_CATEGORIES = ("grammar", "creativity", "consistency", "plot")
MARIN_FIELDS = {
    MARIN_BPB_KEY: "positive", "model_flops": "positive", "model_size": "count", "total_tokens": "count",
    "training_time": "positive", "training_hardware_flops": "positive", "model_config": "dict",
    "run_completion_timestamp": "str?", "author": "dict?", "description": "str?", "resources": "dict?",
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


def datasheet_peak(device, precision="bf16"):
    """flops.py's peak for a device name (a table key or a GPU's name) in a run's precision (fp32 runs: the
    TF32 peak), or None when flops.py has no datasheet number for it."""
    import flops
    import torch  # flops.py imports it anyway
    peak, _ = flops.device_peak_flops(device, torch.float32 if precision == "fp32" else torch.bfloat16)
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
    common.write_json_atomic(path, record)
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


# train.log: what the run printed (its environment sections: a resumed run appends one more), from which a
# target is checked. train.py logs "budget: ... or val bpb <= <target>" at every start, "step <n> val bpb <bpb> ..."
# at every validation, and stops at the first validation that reaches the target.
VAL_LINE = re.compile(r"^step (\d+) val bpb (\d+\.\d+) ")
TARGET_IN_BUDGET = re.compile(r"^budget: .* or val bpb <= (\S+)$")
LOGGED_BPB = 5e-7  # validations are logged with 6 decimals


def logged_run_lines(log_path) -> list[str]:
    """The lines train.py printed into train.log: its environment sections, never the logged source files."""
    data = pathlib.Path(log_path).read_bytes()
    lines, headers = [], list(SECTION_LINE.finditer(data))
    for m, following in zip(headers, headers[1:] + [None]):
        if m.group(0) == f"{'=' * 20} environment {'=' * 20}".encode():
            block = data[m.end():following.start() if following else len(data)]
            lines += block.decode("utf-8", errors="replace").splitlines()
    return lines


def check_target_against_log(results_path, rec):
    """A target is what train.log says the run aimed at and reached: the value its budget line names; reached
    only if the validation at the last step is at or below it (train.py stops there, so the time to target is the
    run's training time); not reached only if no logged validation got there."""
    target, field = rec["target"], "target"
    if target is None:
        return []
    if target["metric"] != "bpb":
        return [invalid(results_path, f"{field}.metric", f"{short_json(target['metric'])}; train.py's --target_bpb "
                                                         f"is \"bpb\", the one target checked against train.log")]
    log_path = pathlib.Path(results_path).with_name("train.log")
    if not log_path.is_file():
        return []  # check_code_against_log names the missing log
    lines = logged_run_lines(log_path)
    named = [m.group(1) for m in map(TARGET_IN_BUDGET.match, lines) if m]
    if not named or parse_float(named[-1]) != target["value"]:
        return [invalid(results_path, f"{field}.value", f"{target['value']} but train.log's last budget line "
                                                        f"names {'target ' + named[-1] if named else 'no target'}")]
    validations = [(int(m.group(1)), float(m.group(2))) for m in map(VAL_LINE.match, lines) if m]
    steps, train_seconds = rec["training"]["steps"], rec["compute"]["train_seconds"]
    if target["reached"]:
        final = [bpb for step, bpb in validations if step == steps]
        if not final or final[-1] > target["value"] + LOGGED_BPB:
            return [invalid(results_path, f"{field}.reached", f"true, but train.log's validation at the last step "
                                                              f"({steps}) " + (f"has bpb {final[-1]:.6f} > {target['value']}"
                                                                               if final else "is not logged"))]
        seconds = target.get("seconds")
        if seconds is None or not train_seconds * (1 - TOLERANCE) <= seconds <= train_seconds * (1 + EXACT):
            return [invalid(results_path, f"{field}.seconds", f"{short_json(seconds)} but the run stopped at the target "
                                                              f"after compute.train_seconds {train_seconds:.6g}: "
                                                              f"the time to target is the training time")]
        return []
    reached = [(step, bpb) for step, bpb in validations if bpb <= target["value"] - LOGGED_BPB]
    if reached:
        return [invalid(results_path, f"{field}.reached", f"false, but train.log's validation at step {reached[0][0]} "
                                                          f"has bpb {reached[0][1]:.6f} <= {target['value']}")]
    if target.get("seconds") is not None:
        return [invalid(results_path, f"{field}.seconds", "a time to a target that was not reached: null")]
    return []


def parse_float(text):
    """A number as a log line writes it, or None."""
    try:
        return float(text)
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------------
# Reading one record file into runs. A run is a plain dict with the fields the tables need.

def normalized_id(eval_id):
    """An eval id lower-cased with punctuation dropped: "Paloma-C4_EN" -> "palomac4en"."""
    return re.sub(r"[^a-z0-9]", "", eval_id.lower())


def primary_evals(track, evals):
    """[(eval id, bpb, fingerprint)] for the eval entries that count as the track's primary BPB."""
    prefix = PRIMARY_EVAL_PREFIX[track]
    return sorted((k, v["bpb"], v["fingerprint"]) for k, v in evals.items() if normalized_id(k).startswith(prefix))


def eval_context(rec, eval_id):
    """None when the eval entry was scored at the run's training context (its seq_len is training.seq_len, or
    absent: written before eval_bpb recorded it, when eval_bpb's default was the model's block_size, which
    train.py sets to training.seq_len), else the context it was scored at: a table of its own."""
    context = rec["eval"][eval_id].get("seq_len")
    return None if context in (None, rec["training"]["seq_len"]) else context


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
    problems += check_target_against_log(path, rec)
    if problems:
        return [], problems

    compute, training, target, judge = rec["compute"], rec["training"], rec["target"], rec["judge"]
    run = {
        "file": pathlib.Path(path), "track": track, "format": SCHEMA, "name": rec["name"],
        "author": rec["author"]["name"], "date": rec["date"], "params": rec["params"]["counted"],
        "weight_class": rec["params"]["weight_class"], "tokens": training["tokens"],
        "model_flops": float(compute["model_flops"]), "hardware_flops": float(compute["hardware_flops"]),
        "seconds": float(compute["train_seconds"]), "hardware": f"{compute['device_count']}× {compute['device']}",
        "mfu": float(compute["mfu"]), "evals": evals, "eval_context": {k: eval_context(rec, k) for k, _, _ in evals},
        "description": rec["description"],
        "target": target, "judge_overall": float(judge["overall"]) if judge else None, "notes": [],
        "sweep": rec.get("sweep") or None, "flags": [],
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
        context, block_size = entry.get("seq_len"), model_config.get("block_size")
        if is_int(context) and is_int(block_size) and context > block_size:
            problems.append(invalid(path, f"eval.{eval_id}.seq_len", f"{context:,} is longer than the model's "
                                                                     f"block_size {block_size:,}"))
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
    known = datasheet_peak(compute["device"], compute.get("precision", "bf16"))
    if known is None and not measured:
        problems.append(invalid(path, "compute.peak_flops_per_device", f"flops.py has no datasheet peak for "
                                      f"{short_json(compute['device'])}: measure it and set compute.peak_flops_source to \"measured\""))
    elif known is not None and not measured:
        problems.append(check_close(path, "compute.peak_flops_per_device", peak, known,
                                    f"flops.py's datasheet peak for {compute['device']}"))
    elif known is not None and not known / MEASURED_PEAK_FACTOR <= peak <= known * (1 + TOLERANCE):
        problems.append(invalid(path, "compute.peak_flops_per_device", f"{peak:.6g} measured, but flops.py's datasheet "
                                      f"peak for {compute['device']} is {known:.6g}: a measured peak lies between "
                                      f"1/{MEASURED_PEAK_FACTOR} of it and it; use the datasheet figure"))
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
# refused only when it is malformed (a field missing or of the wrong type); figures that contradict each other
# under every convention Marin has used flag the row (shown, ranked apart: it is Marin's published data).

MARIN_EXTRA_FIELDS = {"num_devices": "count?", "num_chips": "count?", "device_flops": "positive?",
                      "model_flops_per_token": "positive?", "train_config": "dict?", "tokenized_dataset": "str?",
                      "wandb_run_link": "str?"}
MARIN_OLD_INFO_FIELDS = {"model_config": "dict", "num_parameters": "count", "total_tokens": "count",
                         "run_completion_timestamp": "str?", "hardware_config": "dict?", "train_config": "dict?",
                         "author": "dict?", "description": "str?", "tokenized_dataset": "str?", "wandb_run_link": "str?",
                         "wandb_run_id": "str?"}
MARIN_OLD_STATS_FIELDS = {MARIN_BPB_KEY: "positive", "training_time_in_minutes": "positive",
                          "total_training_flops": "positive?", "pre_run_flops_estimate": "positive?",
                          "final_flops_estimate": "positive?"}
# the first older files wrote their FLOPs estimates as text ("7.49e+17"): read as the numbers they spell
MARIN_OLD_FLOPS_KEYS = ("total_training_flops", "final_flops_estimate", "pre_run_flops_estimate")
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


def marin_numbers_from_text(stats):
    """The older run_stats with its FLOPs estimates written as text ("7.49e+17") read as numbers; anything else
    as it is (the field checks then name it)."""
    stats = dict(stats)
    for key in MARIN_OLD_FLOPS_KEYS:
        value = stats.get(key)
        if isinstance(value, str) and re.fullmatch(r"\s*[0-9.]+(e[+-]?[0-9]+)?\s*", value, re.I):
            with contextlib.suppress(ValueError):
                stats[key] = float(value)
    return stats


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
        stats = marin_numbers_from_text(stats)
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
        key = next((k for k in MARIN_OLD_FLOPS_KEYS if stats.get(k)), None)
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
        # a well-formed file whose figures contradict each other is Marin's published data all the same: shown,
        # with each contradiction as a flag, and ranked apart (see make_row)
        model_flops, flags = check_marin_model_flops(path, f, notes)
        hardware_flops, hardware, more = check_marin_hardware(path, f, notes)
        flags += more + marin_six_nd_flags(path, f, model_flops)
        flags += mfu_flags(path, f["prefix"] + ("training_hardware_flops" if f["form"] == "run_info" else "(hardware FLOPs)"),
                           model_flops, hardware_flops)
        if model_flops is None:  # no FLOPs at all: nothing to place the run by
            problems += flags
            continue
        flags = [without_path(path, flag) for flag in flags]  # the row names its folder; the README stays the same anywhere
        info = f["info"]
        author = info.get("author") or {}
        stamp = info.get("run_completion_timestamp")
        if not stamp:
            notes.append("date unknown: the file has no run_completion_timestamp")
        runs.append({
            "file": pathlib.Path(path), "track": track, "format": "marin",
            "name": folder_name if len(data["runs"]) == 1 else f"{folder_name}#{i}",
            "author": author.get("name") if isinstance(author.get("name"), str) else "—",
            "description": info.get("description") or "",
            "date": stamp[:10] if stamp else "unknown", "params": f["params"],
            "weight_class": flops.weight_class(f["params"]), "tokens": f["tokens"],
            "model_flops": model_flops, "hardware_flops": hardware_flops,
            "seconds": f["seconds"], "hardware": hardware,
            "mfu": model_flops / hardware_flops if model_flops and hardware_flops else None,
            "evals": [(MARIN_EVAL_ID, f["bpb"], MARIN_FINGERPRINT)],
            "target": None, "judge_overall": None, "notes": notes, "sweep": None, "flags": flags,
        })
    return runs, problems


# 6·N·tokens, the usual estimate of training FLOPs, and how far below it a model's FLOPs may plausibly be: a Marin
# run's own figures sit at 0.5-1.0 of it (N counts the embeddings, which cost no FLOPs), a sparse mixture of experts
# lower (N counts every expert). Below a tenth of it the figure is not a model's.
SIX_N_TOKENS_FLOOR = 0.1


def without_path(path, problem):
    """A problem of `invalid` as a row's flag: the field and what is wrong, without the file's path."""
    return problem.removeprefix(display_path(path) + ": ")


def model_flops_recomputed(f):
    """Whether check_marin_model_flops recomputed the run's model FLOPs from its config (a plain Llama or this
    repository's own config, with a sequence length): only then is Marin's figure verified."""
    config = f["info"]["model_config"]
    ours = our_config_in_marin(config)
    mapped = ours is not None or (marin_config_as_gpt(config) is not None and not marin_features(config))
    return f["seq_len"] is not None and mapped


def marin_six_nd_flags(path, f, model_flops):
    """A flag when model FLOPs that nothing here recomputes are implausibly low for the parameters and tokens the
    file states: below SIX_N_TOKENS_FLOOR × 6 · model_size · total_tokens."""
    if model_flops is None or model_flops_recomputed(f):
        return []
    estimate = 6.0 * f["params"] * f["tokens"]
    if model_flops >= SIX_N_TOKENS_FLOOR * estimate:
        return []
    field = f["prefix"] + ("model_flops" if f["form"] == "run_info" else "(model FLOPs)")
    return [invalid(path, field, f"unverified: {fmt_sci(model_flops)} is {100 * model_flops / estimate:.2g}% of "
                                 f"6 × {f['params']:,} params × {f['tokens']:,} tokens = {fmt_sci(estimate)} (the "
                                 f"config is not one whose FLOPs are computed here, and no model's are that low)")]


def mfu_flags(path, field, model_flops, hardware_flops):
    """A flag when hardware FLOPs are below model FLOPs: an MFU above 100%, an impossible figure."""
    if model_flops is not None and hardware_flops is not None and model_flops > hardware_flops * (1 + TOLERANCE):
        return [invalid(path, field, f"{fmt_sci(hardware_flops)} is below model_flops {fmt_sci(model_flops)}: "
                                     f"an MFU above 100% ({100 * model_flops / hardware_flops:.0f}%)")]
    return []


# ----------------------------------------------------------------------------------------------------
# --marin_runs: Marin's site data, data/runs.json of github.com/marin-community/speedrun: a list of runs with the
# figures the site shows (no config, no token count: only the MFU can be checked). Its rows join the table of
# Marin's runs, named by run_name; a run_name with folders puts the run in the Scaling group of its folder.

MARIN_SITE_FIELDS = {"run_name": "str", "model_size": "count", "training_hardware_flops": "positive",
                     "model_flops": "positive", "eval_paloma_c4_en_bpb": "positive", "training_time": "positive",
                     "author": "dict", "author.name": "str", "run_completion_timestamp": "str?",
                     "results_filepath": "str?", "description": "str?", "wandb_link": "str?"}
MARIN_REPO_URL = "https://github.com/marin-community/marin/tree/main/"
SITE_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")  # a path of plain names: it becomes a link


def load_marin_site_runs(path, track="fineweb-edu"):
    """The runs of Marin's runs.json as runs of the table of Marin's runs, or a ValueError naming the entry and the
    field."""
    import flops
    try:
        text = pathlib.Path(path).read_bytes().decode("utf-8")
        data = json.loads(text)
    except OSError as e:
        raise ValueError(f"cannot read {display_path(path)}: {e.strerror}; pass --marin_runs=FILE (Marin's "
                         f"data/runs.json)") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{display_path(path)}: not JSON ({str(e).split(';')[0]}); it should be Marin's "
                         f"data/runs.json") from None
    if not isinstance(data, list) or json_depth(data) > MAX_JSON_DEPTH:
        raise ValueError(f"{display_path(path)}: expected a list of runs (Marin's data/runs.json)")
    runs, names = [], set()
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(invalid(path, f"[{i}]", "expected an object"))
        problems = check_types(entry, MARIN_SITE_FIELDS, path, f"[{i}].")
        if not problems and (not SITE_RUN_NAME.fullmatch(entry["run_name"]) or ".." in entry["run_name"].split("/")):
            problems.append(invalid(path, f"[{i}].run_name", f"{short_json(entry['run_name'])} is not a path of plain names"))
        if not problems and entry["run_name"] in names:
            problems.append(invalid(path, f"[{i}].run_name", f"{short_json(entry['run_name'])} twice"))
        if problems:
            raise ValueError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        name = entry["run_name"]
        names.add(name)
        model_flops, hardware_flops = float(entry["model_flops"]), float(entry["training_hardware_flops"])
        stamp = entry.get("run_completion_timestamp")
        runs.append({
            "file": pathlib.Path(path), "track": track, "format": "marin-site", "name": name, "label": name,
            "folder": pathlib.PurePosixPath("marin-site", name), "order": i,
            "link": MARIN_REPO_URL + "experiments/speedrun/" + name,
            "author": entry["author"]["name"], "date": stamp[:10] if stamp else "unknown",
            "description": entry.get("description") or "",
            "params": entry["model_size"], "weight_class": flops.weight_class(entry["model_size"]), "tokens": None,
            "model_flops": model_flops, "hardware_flops": hardware_flops, "seconds": float(entry["training_time"]),
            "hardware": "—", "mfu": model_flops / hardware_flops,
            "evals": [(MARIN_EVAL_ID, float(entry["eval_paloma_c4_en_bpb"]), MARIN_FINGERPRINT)],
            "target": None, "judge_overall": None, "notes": [] if stamp else ["date unknown: no run_completion_timestamp"],
            "sweep": scaling_group_name(name) if "/" in name else None,
            "flags": [without_path(path, flag) for flag in mfu_flags(path, f"[{i}].training_hardware_flops",
                                                                      model_flops, hardware_flops)],
        })
    return runs


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


# Fields of a results.json that only --export_marin reads (train.py writes neither): checked before they are copied.
EXPORT_FIELDS = {"wandb_run_link": "url?", "hyperparameters": "dict?"}


def non_finite(value, path, field):
    """A problem for each NaN or infinity in a JSON value (Python's json reads them; strict JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [invalid(path, field, f"{value}: not a finite number (strict JSON has no NaN or Infinity)")]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [p for key, v in items for p in non_finite(v, path, f"{field}.{key}")]  # depth: read_json's limit


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
    problems += check_types(rec, EXPORT_FIELDS, record_path) + non_finite(rec.get("hyperparameters"), record_path,
                                                                           "hyperparameters")
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
    """Write RECORD_DIR/speedrun_results.json from RECORD_DIR/results.json (atomically), only for a record that
    passes every check the leaderboard makes, as strict JSON."""
    path, rec = read_record(record_dir)
    if rec.get("schema") != SCHEMA:
        raise ValueError(f"{display_path(path)}: schema {short_json(rec.get('schema'))}, expected \"{SCHEMA}\"")
    _, problems = load_speedrun_record(path, check_track(rec.get("track")))
    if problems:
        more = f" (and {len(problems) - 1} more: python leaderboard.py --check lists them)" if len(problems) > 1 else ""
        raise ValueError(f"not exported, the record is invalid: {problems[0]}{more}")
    out = pathlib.Path(record_dir) / MARIN_NAME
    text = json.dumps({"runs": [{"run_info": marin_run_info(rec, path)}]}, indent=2, ensure_ascii=False, allow_nan=False)
    common.write_file_atomic(out, (text + "\n").encode("utf-8"))
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
        "folder": first.get("label") or folder.name, "link": first.get("link") or link, "author": first["author"],
        "date": max(r["date"] for r in runs),
        "params": max(r["params"] for r in runs), "weight_class": first["weight_class"],
        "tokens": mean([r["tokens"] for r in runs]) if all(r["tokens"] for r in runs) else None,
        "model_flops": mean([r["model_flops"] for r in runs]),
        "hardware_flops": (mean([r["hardware_flops"] for r in runs])
                           if all(r["hardware_flops"] is not None for r in runs) else None),
        # each note once, in the runs' order; a run of several gets its name in front
        "notes": list(dict.fromkeys((f"{r['name']}: {n}" if len(runs) > 1 else n) for r in runs for n in r.get("notes", ()))),
        "seconds": mean([r["seconds"] for r in runs]),
        "hardware": " / ".join(sorted({r["hardware"] for r in runs})),
        "mfu": mean(mfus) if mfus else None,
        "bpb": bpb, "spread": spread, "n": len(runs), "target": target,
        "p_value": one_sided_p_below(bpbs, target) if target is not None else None,
        "judge": sum(judged) / len(judged) if judged else None,
        # time to target counts only when every run reached the same target
        "target_seconds": (mean_and_sd([r["target"]["seconds"] for r in reached])
                           if target is not None and len(reached) == len(runs) else None),
        "target_metric": first["target"]["metric"] if first["target"] else None,
        # a flagged row (an impossible or unverifiable figure) is shown with its flags and ranked apart
        "flags": list(dict.fromkeys(f for r in runs for f in r.get("flags", ()))),
        "sweep": first.get("sweep"), "order": min(r.get("order", math.inf) for r in runs),
        "description": first.get("description", ""),
    }


def build_tables(runs, link_base):
    """[{track, eval_id, fingerprint, context, rows}] sorted by track, eval id, fingerprint and context; rows ranked,
    Pareto marked. BPBs are ranked together only on the same text (fingerprint) scored in the same way: each run
    at its own training context (context None; Marin scores at the model's seq_len too), or all at one other
    context (eval_context)."""
    groups = {}
    for run in runs:
        for eval_id, bpb, fingerprint in run["evals"]:
            key = (run["track"], eval_id, fingerprint, run.get("eval_context", {}).get(eval_id))
            groups.setdefault(key, {}).setdefault(run["folder"], []).append(dict(run, bpb=bpb))
    tables = []
    for (track, eval_id, fingerprint, context), by_folder in groups.items():
        rows = [make_row(folder, folder_runs, pathlib.Path(os.path.relpath(folder, link_base)).as_posix())
                for folder, folder_runs in by_folder.items()]
        rows.sort(key=lambda r: (r["bpb"], r["model_flops"], r["date"], r["folder"]))
        ranked, flagged = [r for r in rows if not r["flags"]], [r for r in rows if r["flags"]]
        for rank, (row, star) in enumerate(zip(ranked, pareto_front([(r["model_flops"], r["bpb"]) for r in ranked])), 1):
            row["rank"], row["pareto"] = rank, star
        for row in flagged:
            row["rank"], row["pareto"] = None, False
        rows = ranked + flagged
        tables.append({"track": track, "eval_id": eval_id, "fingerprint": fingerprint, "context": context, "rows": rows})
    tables.sort(key=lambda t: (TRACKS.index(t["track"]), t["eval_id"], t["fingerprint"], t["context"] or 0))
    return tables


# ----------------------------------------------------------------------------------------------------
# The Scaling view, as Marin's site computes it (marin-community/speedrun, website/src/hooks/useSpeedrunData.ts and
# website/src/utils/regression.ts): a run's group is its name without the last path part; per group a power law
# with an irreducible loss, L = a·C^(−b) + c, fitted by the npm package ml-levenberg-marquardt 5.0.0 with the site's
# options; the group's forecast is L at 1e22 FLOPs; a group is ranked only when one of its runs used more than 3e20
# training hardware FLOPs. Ported here (no JavaScript runs): the same start, the same iteration, the same bounds.
# Beside it, what the site does not show: the converged least-squares fit of the same law and the range of the
# forecast when each point is left out in turn, so a reader sees which rankings are fragile.

SCALING_FORECAST_FLOPS = 1e22
SCALING_MIN_HARDWARE_FLOPS = 3e20  # a group qualifies with a run above this many training hardware FLOPs
SITE_LM_OPTIONS = {"damping": 1.5, "gradient_difference": 1e-6, "max_iterations": 200, "error_tolerance": 1e-8}
# ml-levenberg-marquardt's defaults that the site keeps: the damping's step factors and the improvement threshold
LM_DAMPING_UP, LM_DAMPING_DOWN, LM_IMPROVEMENT_THRESHOLD = 11.0, 9.0, 1e-3
SITE_ENTROPY_FLOOR = 0.7  # the site starts c at min(0.7, 0.7 × the lowest BPB)


def scaling_group_name(run_name):
    """Marin's group of a run: every part of its name but the last ("adamw_llama_scaling/130m" ->
    "adamw_llama_scaling"); a name without a folder is its own group."""
    parts = [p for p in run_name.split("/") if p]
    return run_name if len(parts) <= 1 else "/".join(parts[:-1])


def linear_fit(points):
    """Ordinary least squares y = intercept + slope·x: (slope, intercept), or None for fewer than two points or
    one x value."""
    n = len(points)
    if n < 2:
        return None
    sx, sy = sum(x for x, _ in points), sum(y for _, y in points)
    sxy, sxx = sum(x * y for x, y in points), sum(x * x for x, _ in points)
    den = n * sxx - sx * sx
    if den == 0:
        return None
    slope = (n * sxy - sx * sy) / den
    return slope, (sy - slope * sx) / n


def power_law(params, x):
    a, b, c = params
    return a * x ** -b + c


def solve_linear(matrix, vector):
    """matrix⁻¹ · vector by Gaussian elimination with partial pivoting; None when the matrix is singular."""
    n = len(vector)
    rows = [list(map(float, matrix[i])) + [float(vector[i])] for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(rows[r][col]))
        if rows[pivot][col] == 0:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(col + 1, n):
            factor = rows[r][col] / rows[col][col]
            for k in range(col, n + 1):
                rows[r][k] -= factor * rows[col][k]
    out = [0.0] * n
    for r in range(n - 1, -1, -1):
        out[r] = (rows[r][n] - sum(rows[r][k] * out[k] for k in range(r + 1, n))) / rows[r][r]
    return out


def sum_squares(params, xs, ys):
    return sum((y - power_law(params, x)) ** 2 for x, y in zip(xs, ys))


def site_levenberg_marquardt(xs, ys, start, lower, upper):
    """ml-levenberg-marquardt 5.0.0 as the site calls it: forward-difference Jacobian, the damped normal equations
    (damping·I + J·Jᵀ)·step = J·residuals, every step taken and clipped to the bounds (a worse one raises the
    damping, it is not undone), the best parameters seen returned. Returns the parameters."""
    params, damping = list(start), SITE_LM_OPTIONS["damping"]
    delta, tolerance = SITE_LM_OPTIONS["gradient_difference"], SITE_LM_OPTIONS["error_tolerance"]
    error = sum_squares(params, xs, ys)
    best_error, best = error, list(params)
    converged = error <= tolerance
    for _ in range(SITE_LM_OPTIONS["max_iterations"]):
        if converged:
            break
        previous = error
        fitted = [power_law(params, x) for x in xs]
        jacobian = []  # one row per parameter: (f(x) − f(x; p + delta)) / delta, the package's sign
        for k in range(3):
            moved = list(params)
            moved[k] += delta
            jacobian.append([(f - power_law(moved, x)) / delta for f, x in zip(fitted, xs)])
        residuals = [y - f for y, f in zip(ys, fitted)]
        normal = [[sum(p * q for p, q in zip(jacobian[i], jacobian[j])) + (damping if i == j else 0.0)
                   for j in range(3)] for i in range(3)]
        gradient = [sum(p * r for p, r in zip(jacobian[i], residuals)) for i in range(3)]
        step = solve_linear(normal, gradient)
        if step is None:
            break  # the package throws on a singular matrix, and the site then shows no fit
        params = [min(max(lower[k], params[k] - step[k]), upper[k]) for k in range(3)]
        error = sum_squares(params, xs, ys)
        if math.isnan(error):
            break
        if error < best_error - tolerance:
            best_error, best = error, list(params)
        predicted = sum(s * (damping * s + g) for s, g in zip(step, gradient))
        gain = previous - error
        # the package divides by `predicted` as JavaScript does: x / 0 is ±Infinity, 0 / 0 is NaN (not above)
        improvement = gain / predicted if predicted else math.copysign(math.inf, gain) if gain else math.nan
        if improvement > LM_IMPROVEMENT_THRESHOLD:
            damping = max(damping / LM_DAMPING_DOWN, 1e-7)
        else:
            damping = min(damping * LM_DAMPING_UP, 1e7)
        converged = error <= tolerance
    return best


def r_squared(params, xs, ys):
    mean = sum(ys) / len(ys)
    total = sum((y - mean) ** 2 for y in ys)
    return 1.0 if total == 0 else 1.0 - sum_squares(params, xs, ys) / total


def fit_bounds(ys):
    """The site's bounds for (a, b, c): a in [1e-10, 1e30], b in [1e-6, 2], c in [0, 0.999 × the lowest BPB]."""
    return [1e-10, 1e-6, 0.0], [1e30, 2.0, 0.999 * min(ys)]


def clean_points(points):
    """The points a fit uses, sorted by FLOPs: positive finite FLOPs and a finite BPB."""
    return sorted((float(x), float(y)) for x, y in points if x > 0 and math.isfinite(x) and math.isfinite(y))


def site_power_law_fit(points):
    """The site's fit of L = a·C^(−b) + c to [(FLOPs, BPB)]: {a, b, c, r2}, or None (fewer than three points, or a
    fit the site rejects). The start: c = min(0.7, 0.7 × min L), then a and b from a line through log C and
    log(L − c)."""
    points = clean_points(points)
    if len(points) < 3:
        return None
    xs, ys = [x for x, _ in points], [y for _, y in points]
    c0 = min(SITE_ENTROPY_FLOOR, SITE_ENTROPY_FLOOR * min(ys))
    a0, b0 = 1.0, 0.1
    line = linear_fit([(math.log(x), math.log(y - c0)) for x, y in points if y - c0 > 0])
    if line is not None:
        b0, a0 = max(0.01, -line[0]), math.exp(line[1])
    lower, upper = fit_bounds(ys)
    try:
        a, b, c = site_levenberg_marquardt(xs, ys, [a0, b0, c0], lower, upper)
    except OverflowError:
        return None
    if not all(math.isfinite(v) for v in (a, b, c)) or a <= 0 or b <= 0 or c < 0:
        return None
    return {"a": a, "b": b, "c": c, "r2": r_squared((a, b, c), xs, ys)}


def best_linear_part(xs, ys, b, lower, upper):
    """For a fixed exponent b the law is linear in (a, c): the least-squares (a, c) inside the bounds. A convex
    problem in two unknowns: its optimum is the unconstrained one when that is inside, else on an edge of the box,
    where it is a one-unknown least-squares clipped to the edge."""
    u = [x ** -b for x in xs]
    n, su, sy = len(xs), sum(u), sum(ys)
    suu, suy = sum(v * v for v in u), sum(v * y for v, y in zip(u, ys))
    (a_lo, _, c_lo), (a_hi, _, c_hi) = lower, upper
    clip = lambda v, lo, hi: min(max(v, lo), hi)
    candidates = []
    den = n * suu - su * su
    if den > 0:
        a = (n * suy - su * sy) / den
        candidates.append((a, (sy - a * su) / n))
    for c in (c_lo, c_hi):  # the edges c = bound: a by least squares
        candidates.append((clip((suy - c * su) / suu, a_lo, a_hi), c))
    for a in (a_lo, a_hi):  # the edges a = bound: c by least squares
        candidates.append((a, clip((sy - a * su) / n, c_lo, c_hi)))
    feasible = [(a, c) for a, c in candidates if a_lo <= a <= a_hi and c_lo <= c <= c_hi]
    return min(feasible, key=lambda ac: sum_squares((ac[0], b, ac[1]), xs, ys))


def converged_power_law_fit(points):
    """The least-squares fit of the same law in the same bounds, converged: for each exponent b the best (a, c) is
    exact (best_linear_part), and b is searched on a grid over its bounds, then refined by golden sections.
    {a, b, c, r2} or None for fewer than three points."""
    points = clean_points(points)
    if len(points) < 3:
        return None
    xs, ys = [x for x, _ in points], [y for _, y in points]
    lower, upper = fit_bounds(ys)
    try:
        def loss(b):
            a, c = best_linear_part(xs, ys, b, lower, upper)
            return sum_squares((a, b, c), xs, ys)
        grid = [lower[1] + (upper[1] - lower[1]) * i / 200 for i in range(201)]
        losses = [loss(b) for b in grid]
        i = min(range(len(grid)), key=losses.__getitem__)
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        ratio = (math.sqrt(5) - 1) / 2
        m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        l1, l2 = loss(m1), loss(m2)
        for _ in range(80):  # golden sections inside the bracket around the best grid point: 0.618^80 of it left
            if l1 <= l2:
                hi, m2, l2 = m2, m1, l1
                m1 = hi - ratio * (hi - lo)
                l1 = loss(m1)
            else:
                lo, m1, l1 = m1, m2, l2
                m2 = lo + ratio * (hi - lo)
                l2 = loss(m2)
        b = min((lo + hi) / 2, grid[i], key=loss)
    except (OverflowError, ZeroDivisionError):
        return None
    a, c = best_linear_part(xs, ys, b, lower, upper)
    return {"a": a, "b": b, "c": c, "r2": r_squared((a, b, c), xs, ys)}


def forecast(fit, flops=SCALING_FORECAST_FLOPS):
    return power_law((fit["a"], fit["b"], fit["c"]), flops) if fit else None


def leave_one_out_range(points):
    """(lowest, highest) converged forecast over the fits that leave out one point each; None below four points
    (three parameters need three points)."""
    points = clean_points(points)
    if len(points) < 4:
        return None
    forecasts = [forecast(converged_power_law_fit(points[:i] + points[i + 1:])) for i in range(len(points))]
    forecasts = [f for f in forecasts if f is not None]
    return (min(forecasts), max(forecasts)) if forecasts else None


# ----------------------------------------------------------------------------------------------------
# Marin's site views of one table: All runs (its frontier over model or hardware FLOPs), Scaling (the groups, the
# sweeps of our records), relative (each run's BPB against the AdamW-Llama baseline's at the same FLOPs)

X_AXES = {"model": "model_flops", "hardware": "hardware_flops"}
X_NAMES = {"model": "model FLOPs", "hardware": "training hardware FLOPs"}
BASELINE_NAME = "adamw_llama_scaling"  # the site's baseline: every run whose name holds this
SAME_FLOPS = 1e-12  # the site takes FLOPs within this relative distance for the same count


def site_pareto(rows, x):
    """The All-runs frontier as the site draws it: the ranked rows sorted by their x FLOPs (ties in the order of
    the input, a Marin runs.json row's place in the file), a row on it when its BPB is below every row before it.
    [row]. (The tables' ★ is the stricter rule of pareto_front.)"""
    key = X_AXES[x]
    candidates = sorted(((r[key], r["order"], i, r) for i, r in enumerate(rows) if not r["flags"] and r[key]),
                        key=lambda t: t[:3])
    front, best = [], math.inf
    for *_, row in candidates:
        if row["bpb"] < best:
            best = row["bpb"]
            front.append(row)
    return front


@functools.lru_cache(maxsize=4096)
def group_fits(points):
    """(the site's fit, the converged fit, the leave-one-out range) of a group's points (a tuple): the page, the
    JSON and the tables ask for the same groups, and the fits depend on the points alone."""
    return site_power_law_fit(points), converged_power_law_fit(points), leave_one_out_range(points)


def scaling_groups(rows, x):
    """The Scaling view of a table over x FLOPs: one group per sweep (a Marin run's folder, our records' `sweep`),
    with the site's fit and forecast, the converged fit and the leave-one-out range. The qualified groups ranked by
    the site's forecast (ties by name), then the others. [group dict]."""
    key, members = X_AXES[x], {}
    for r in rows:
        if r["sweep"] and not r["flags"] and r[key] and r["bpb"] > 0:
            members.setdefault(r["sweep"], []).append(r)
    groups = []
    for name, runs in members.items():
        site, converged, loo = group_fits(tuple((r[key], r["bpb"]) for r in runs))
        groups.append({
            "group": name, "n": len(runs), "runs": [r["folder"] for r in runs],
            "qualified": any((r["hardware_flops"] or 0) > SCALING_MIN_HARDWARE_FLOPS for r in runs),
            "forecast_1e22": forecast(site), "r2": site and site["r2"],
            "a": site and site["a"], "b": site and site["b"], "c": site and site["c"],
            "converged": converged, "converged_forecast_1e22": forecast(converged),
            "leave_one_out": list(loo) if loo else None})
    order = lambda g: (math.inf if g["forecast_1e22"] is None else g["forecast_1e22"], g["group"])
    ranked = sorted((g for g in groups if g["qualified"]), key=order)
    for rank, g in enumerate(ranked, 1):
        g["rank"] = rank
    others = sorted((g for g in groups if not g["qualified"]), key=order)
    for g in others:
        g["rank"] = None
    return ranked + others


def baseline_predictor(rows, x):
    """The site's baseline BPB at any x FLOPs, from the rows named like BASELINE_NAME: its own BPB at its own FLOPs,
    linear in log FLOPs between two of its runs, its power law (the site's fit) outside them, else the nearest
    run's. (function, baseline rows) or None when the table has no baseline run."""
    key = X_AXES[x]
    base_rows = [r for r in rows if BASELINE_NAME in r["folder"].lower() and r[key] and r[key] > 0 and r["bpb"] > 0]
    if not base_rows:
        return None
    base = sorted((r[key], r["bpb"]) for r in base_rows)
    law = site_power_law_fit(base)

    def predict(flops):
        for bx, by in base:
            if abs(bx - flops) <= max(abs(bx), abs(flops), 1.0) * SAME_FLOPS:
                return by
        if base[0][0] <= flops <= base[-1][0]:
            for (lx, ly), (rx, ry) in zip(base, base[1:]):
                if lx <= flops <= rx:
                    t = (math.log(flops) - math.log(lx)) / (math.log(rx) - math.log(lx))
                    return ly + t * (ry - ly)
        if law:
            return forecast(law, flops)
        return base[0][1] if flops < base[0][0] else base[-1][1]
    return predict, base_rows


def relative_rows(rows, x):
    """The relative view: every ranked row's BPB as a percentage above (+) or below (−) the baseline's at its x
    FLOPs, as the site computes it. [{run, flops, bpb, baseline_bpb, relative_percent}] or None without a baseline."""
    found = baseline_predictor(rows, x)
    if found is None:
        return None
    predict, _ = found
    key, out = X_AXES[x], []
    for r in rows:
        if r["flags"] or not r[key]:
            continue
        base = predict(r[key])
        ratio = r["bpb"] / base
        out.append({"run": r["folder"], "flops": r[key], "bpb": r["bpb"], "baseline_bpb": base,
                    "relative_percent": 0.0 if abs(1 - ratio) < SAME_FLOPS else (ratio - 1) * 100})
    return out


def fmt_optional(value, spec):
    return "—" if value is None else format(value, spec)


SCALING_COLUMNS = ["#", "group", "runs", "qualified", "forecast at 1e22 (Marin's fit)", "R²", "a", "b", "c",
                   "converged forecast", "leave-one-out range"]


def scaling_cells(groups):
    return [[str(g["rank"]) if g["rank"] else "—", g["group"], str(g["n"]), "yes" if g["qualified"] else "no",
             fmt_optional(g["forecast_1e22"], ".4f"), fmt_optional(g["r2"], ".4f"),
             fmt_optional(g["a"], ".4g"), fmt_optional(g["b"], ".4f"), fmt_optional(g["c"], ".4f"),
             fmt_optional(g["converged_forecast_1e22"], ".4f"),
             "—" if not g["leave_one_out"] else f"{g['leave_one_out'][0]:.4f} – {g['leave_one_out'][1]:.4f}"]
            for g in groups]


def site_views(table, x="model"):
    """{"all_runs", "scaling", "relative"}: each (heading, columns, cells), None where the table has nothing for it
    (no sweep; no baseline)."""
    key, name = X_AXES[x], X_NAMES[x]
    rows = table["rows"]
    front = {id(r) for r in site_pareto(rows, x)}
    all_runs = (f"All runs over {name} (Marin's site: ◆ on its frontier)",
                ["run", "author", "params", name, "BPB", "frontier"],
                [[(r["folder"], r["link"]), r["author"], fmt_count(r["params"]),
                  fmt_sci(r[key]) if r[key] else "—", fmt_bpb(r), "◆" if id(r) in front else ""]
                 for r in sorted(rows, key=lambda r: (r[key] or math.inf, r["order"], r["folder"]))])
    groups = scaling_groups(rows, x)
    scaling = None if not groups else (
        f"Scaling over {name}: L = a·C^(−b) + c per sweep, forecast at 1e22 FLOPs, ranked when a run used more than "
        f"{SCALING_MIN_HARDWARE_FLOPS:.0e} hardware FLOPs", SCALING_COLUMNS, scaling_cells(groups))
    relative = relative_rows(rows, x)
    relative = None if relative is None else (
        f"Relative to the AdamW-Llama baseline ({BASELINE_NAME}) at the same {name}",
        ["run", name, "BPB", "baseline BPB", "relative"],
        [[r["run"], fmt_sci(r["flops"]), f"{r['bpb']:.4f}", f"{r['baseline_bpb']:.4f}", f"{r['relative_percent']:+.2f}%"]
         for r in sorted(relative, key=lambda r: r["relative_percent"])])
    return {"all_runs": all_runs, "scaling": scaling, "relative": relative}


def render_views_markdown(tables, x="model"):
    """Marin's site views of every table, as Markdown (what --views and --marin_runs print)."""
    out = []
    for table in tables:
        views = site_views(table, x)
        out += [f"### {table_title(table)}", ""]
        for view in (views["all_runs"], views["scaling"], views["relative"]):
            if view:
                heading, columns, cells = view
                out += [f"**{escape(heading)}**", "", markdown_table(columns, cells), ""]
    return "\n".join(out).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------------
# --json: everything the tables and views show, as data

def json_safe(value):
    """A value for json.dumps(allow_nan=False): infinities and NaN as null, tuples as lists, paths as text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, pathlib.PurePath):
        return value.as_posix()
    return value


def leaderboard_data(tables, problems=(), x="model"):
    """The tables and views as one JSON-ready object: per table its rows (a Marin site row named by its run_name),
    the ★ names, the site's frontier, scaling groups and relative view over both FLOPs axes; the size tracks."""
    out = {"schema": "speedrun-leaderboard/1", "x": x, "tables": [], "size_tracks": {}, "problems": list(problems)}
    for table in tables:
        rows = table["rows"]
        out["tables"].append({
            "track": table["track"], "eval_id": table["eval_id"], "fingerprint": table["fingerprint"],
            "title": table_title(table, markdown=False),
            "rows": [{("run" if k == "folder" else k): v for k, v in r.items() if k != "order"} for r in rows],
            "pareto": [r["folder"] for r in rows if r["pareto"]],
            "all_runs": {axis: [r["folder"] for r in site_pareto(rows, axis)] for axis in X_AXES},
            "scaling": {axis: scaling_groups(rows, axis) for axis in X_AXES},
            "relative": {axis: relative_rows(rows, axis) for axis in X_AXES},
        })
    for track in TRACKS:
        entries = size_track_entries([t for t in tables if t["track"] == track])
        if entries is not None:
            out["size_tracks"][track] = [{"size_track": name, "threshold": threshold, "rank": i, "run": r["folder"],
                                          "bpb": r["bpb"], "hardware_flops": r["hardware_flops"]}
                                         for name, threshold, i, t, r in entries]
    return json_safe(out)


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
    context = f", scored at context {table['context']:,}, not the training context" if table.get("context") else ""
    return f"{table['track']} · {kind} ({code}{eval_id}{code}, eval data {code}{fingerprint}{code}{context})"


MAIN_COLUMNS = ["#", "run", "author", "date", "params (class)", "tokens", "model FLOPs", "hardware", "time",
                "MFU", "BPB", "p vs target", "judge", "Pareto"]


def main_table_cells(row):
    return [str(row["rank"]) if row["rank"] else "flagged", (row["folder"], row["link"]), row["author"], row["date"],
            f"{fmt_count(row['params'])} ({row['weight_class']})", fmt_count(row["tokens"]) if row["tokens"] else "—",
            fmt_sci(row["model_flops"]),
            row["hardware"], fmt_seconds(row["seconds"]), f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "—",
            fmt_bpb(row), fmt_p(row["p_value"]) + (f" (< {row['target']})" if row["p_value"] is not None else ""),
            f"{row['judge']:.2f}" if row["judge"] is not None else "—", "★" if row["pareto"] else ""]


def table_views(table):
    """[(heading, columns, rows of cells)]: the ranking, the per-weight-class view, the time-to-target view."""
    views = [(None, MAIN_COLUMNS, [main_table_cells(r) for r in table["rows"]])]
    if table["track"] in TINYSTORIES_TRACKS:
        cells = []
        for cls in weight_class_names():
            in_class = [r for r in table["rows"] if r["weight_class"] == cls and not r["flags"]]
            cells += [[cls, str(i), (r["folder"], r["link"]), f"{fmt_count(r['params'])}", fmt_bpb(r),
                       f"{r['judge']:.2f}" if r["judge"] is not None else "—"] for i, r in enumerate(in_class, 1)]
        views.append(("By weight class", ["class", "#", "run", "params", "BPB", "judge"], cells))
    timed = [r for r in table["rows"] if r["target_seconds"] is not None and not r["flags"]]
    if timed:
        timed.sort(key=lambda r: (r["hardware"], r["target_metric"], r["target"], r["target_seconds"][0], r["folder"]))
        cells = []
        for r in timed:
            mean, sd = r["target_seconds"]
            time = fmt_seconds(mean) + (f" ± {fmt_seconds(sd)}" if r["n"] > 1 else "")
            cells.append([r["hardware"], f"{r['target_metric']} ≤ {r['target']}", (r["folder"], r["link"]), time,
                          str(r["n"]), fmt_p(r["p_value"])])
        views.append(("Time to target (fastest first, by hardware)", ["hardware", "target", "run", "time", "runs", "p"], cells))
    site = site_views(table, "model")
    views += [site[name] for name in ("scaling", "relative") if site[name]]
    return views


def table_notes(table):
    """[(folder, link, note)]: what a row's figures mean where they follow Marin's own conventions."""
    return [(r["folder"], r["link"], note) for r in table["rows"] for note in r["notes"]] + \
        [(r["folder"], r["link"], f"flagged, ranked apart: {flag}") for r in table["rows"] for flag in r["flags"]]


SIZE_TRACK_HEADING = ("Marin's size tracks: runs that reached each Paloma C4-EN BPB threshold, fewest hardware "
                      "FLOPs first (the run's total: the FLOPs to reach the threshold are at most that)")
SIZE_TRACK_COLUMNS = ["size track", "threshold", "#", "run", "eval data", "BPB", "hardware FLOPs", "hardware", "params"]


def size_track_entries(track_tables):
    """The size-track view of one track: every row of its Paloma C4-EN tables (ours and Marin's) under each
    threshold it reaches, as [(size track, threshold, rank, table, row)]; None when the track has no Paloma C4-EN
    table."""
    rows = [(t, r) for t in track_tables if normalized_id(t["eval_id"]).startswith(PALOMA_PREFIX) for r in t["rows"]
            if not r["flags"]]  # a flagged row is ranked apart: in its own table, under no threshold
    if not rows:
        return None
    entries = []
    for name, threshold in MARIN_SIZE_TRACKS:
        reached = sorted(((t, r) for t, r in rows if r["bpb"] <= threshold and r["hardware_flops"] is not None),
                         key=lambda tr: (tr[1]["hardware_flops"], tr[1]["bpb"], tr[1]["folder"]))
        entries += [(name, threshold, i, t, r) for i, (t, r) in enumerate(reached, 1)]
    return entries


def size_track_cells(track_tables):
    entries = size_track_entries(track_tables)
    if entries is None:
        return None
    return [[name, f"{threshold:.4f}", str(i), (r["folder"], r["link"]), short_fingerprint(t["fingerprint"]),
             fmt_bpb(r), fmt_sci(r["hardware_flops"]), r["hardware"], fmt_count(r["params"])]
            for name, threshold, i, t, r in entries]


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


MAX_TICKS = 10
FLOAT_MAX = sys.float_info.max


def flops_axis(rows):
    """(first decade, last decade, decades per tick) of the log FLOPs axis: at most MAX_TICKS + 1 ticks however
    many decades the figures span (a record may say 1e308; 10.0 ** 309 is no float, so ticks are exponents)."""
    logs = [math.log10(r["model_flops"]) for r in rows]
    lo = math.floor(min(logs))
    hi = max(lo + 1, math.ceil(max(logs)))
    return lo, hi, max(1, math.ceil((hi - lo) / MAX_TICKS))


def bpb_axis(rows):
    """(low, high) of the BPB axis: the points and their spreads, padded 5%, within [0, the largest float], so
    that no difference of two figures overflows."""
    lo = max(0.0, min(r["bpb"] - r["spread"] for r in rows))
    hi = min(FLOAT_MAX, max(r["bpb"] + r["spread"] for r in rows))
    pad = max(0.05 * (hi - lo), 0.01)
    return max(0.0, lo - pad), min(FLOAT_MAX, hi + pad)


def svg_panel(table, y0):
    rows = table["rows"]
    x_lo, x_hi, x_step = flops_axis(rows)
    b_lo, b_hi = bpb_axis(rows)
    left, right, top, bottom = MARGIN_L, PANEL_W - MARGIN_R, y0 + MARGIN_T, y0 + PANEL_H - MARGIN_B
    colours = dict(zip(weight_class_names(), CLASS_COLOURS))

    def x_at(decade):
        return left + (decade - x_lo) / (x_hi - x_lo) * (right - left)

    def x_of(flops):
        return x_at(math.log10(flops))

    def y_of(bpb):
        return bottom - (min(max(bpb, b_lo), b_hi) - b_lo) / (b_hi - b_lo) * (bottom - top)

    out = [f'<text x="12" y="{y0 + 22}" font-size="13" font-weight="bold">{table_title(table, markdown=False)}</text>',
           f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#888"/>']
    for e in range(x_lo, x_hi + 1, x_step):  # a tick per decade (per few decades, over a wide span)
        x = x_at(e)
        out.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#888"/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">1e{e}</text>')
    for k in range(5):
        b = b_lo + k * (b_hi - b_lo) / 4
        label = f"{b:.3f}" if b < 1e6 else f"{b:.3g}"
        out.append(f'<text x="{left - 6}" y="{y_of(b) + 4:.1f}" text-anchor="end">{label}</text>')
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
# --html and --serve: the page, its charts and the plot

def html_link(text, target):
    """An <a> to a path of this repository or an http(s) URL, the text escaped; other schemes give the text alone."""
    if urllib.parse.urlsplit(target).scheme not in ("", "http", "https"):
        return escape(text, markdown=False)
    href = urllib.parse.quote(target, safe="/:?#=&%._~-")
    return f"<a href=\"{escape(href, markdown=False)}\">{escape(text, markdown=False)}</a>"


def html_table(columns, cells):
    def cell(c):
        return html_link(*c) if isinstance(c, tuple) else escape(c, markdown=False)
    head = "".join(f"<th>{escape(c, markdown=False)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


SITE_SCRIPT = ROOT / "leaderboard.js"  # the page's charts, hover and record panel (plain JavaScript, no library)
SITE_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin-bottom:1.5em}"
              "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:nth-child(2){text-align:left}"
              ".charts svg{border:1px solid #ddd;margin:0 1em 1em 0;background:#fff}.run{cursor:pointer}"
              "#tooltip{position:fixed;pointer-events:none;background:#222;color:#fff;padding:4px 8px;font-size:12px;"
              "border-radius:3px;display:none;white-space:pre}#record{position:fixed;right:1em;top:1em;width:36em;"
              "max-height:90vh;overflow:auto;background:#fafafa;border:1px solid #888;padding:1em;display:none}"
              "#record pre{white-space:pre-wrap;word-break:break-all}.axis button.on{font-weight:bold}")


def json_for_script(data) -> str:
    """JSON inside <script type="application/json">: `<`, `>` and `&` written as \\u escapes, so no text in it can
    end the script element or start a comment."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(tables, problems=(), x="model"):
    """The leaderboard page (index.html of --html and --serve): every table and view as static HTML, the data for
    the charts embedded as JSON, and assets/leaderboard.js drawing them. Nothing is fetched from the network, so it
    works from file://."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Speedrun leaderboard</title>"
             f"<style>{SITE_STYLE}</style></head><body>",
             "<h1>Speedrun leaderboard</h1>",
             "<p class='axis'>Charts over <button data-x='model'>model FLOPs</button> "
             "<button data-x='hardware'>training hardware FLOPs</button>; hover a point for its run, click it for "
             "its record.</p>",
             "<p><img src='frontier.svg' alt='BPB vs model FLOPs'></p>"]
    index = {id(t): i for i, t in enumerate(tables)}
    for track in TRACKS:
        track_tables = [t for t in tables if t["track"] == track]
        if not track_tables:
            parts.append(f"<h2>{track}</h2><p>No records yet.</p>")
        for table in track_tables:
            parts.append(f"<h2>{table_title(table, markdown=False)}</h2>")  # table_title escapes what it quotes
            parts.append(f"<div class='charts' data-table='{index[id(table)]}'></div>")
            for heading, columns, cells in table_views(table):
                parts.append((f"<h3>{escape(heading, markdown=False)}</h3>" if heading else "") + html_table(columns, cells))
            views = site_views(table, x)  # table_views holds the Scaling and relative views over model FLOPs
            for view in [views["all_runs"]] + ([views["scaling"], views["relative"]] if x != "model" else []):
                if view:
                    heading, columns, cells = view
                    parts.append(f"<h3>{escape(heading, markdown=False)}</h3>" + html_table(columns, cells))
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
    parts += ["<div id='tooltip'></div><div id='record'><button id='record-close'>close</button><h3></h3>"
              "<p class='link'></p><pre></pre></div>",
              f"<script type='application/json' id='leaderboard-data'>{json_for_script(leaderboard_data(tables, problems, x))}</script>",
              "<script src='assets/leaderboard.js'></script>"]
    return "".join(parts) + "</body></html>"


def render_site(tables, problems=(), x="model") -> dict[str, bytes]:
    """{relative path: content} of the static site: index.html, its script and the plot."""
    return {"index.html": render_html(tables, problems, x).encode("utf-8"),
            "assets/leaderboard.js": SITE_SCRIPT.read_bytes(),
            "frontier.svg": render_svg(tables).encode("utf-8")}


def write_site(out_dir, tables, problems=(), x="model"):
    """Write the static site into out_dir (created; the files it holds are replaced, others left alone)."""
    out_dir = pathlib.Path(out_dir)
    for name, content in render_site(tables, problems, x).items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        common.write_file_atomic(path, content)
    return out_dir / "index.html"


SITE_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}


def make_server(records_dir, link_base, port, marin_runs=None, x="model"):
    """An HTTP server on 127.0.0.1 serving the page of --html, built from records/ (and Marin's runs.json when
    given) afresh on every request (call serve_forever)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = urllib.parse.urlsplit(self.path).path.lstrip("/") or "index.html"
            runs, problems = load_records(records_dir)
            if marin_runs:
                runs += load_marin_site_runs(marin_runs)
            site = render_site(build_tables(runs, link_base), problems, x)
            if path not in site:
                self.send_error(404)
                return
            body = site[path]
            self.send_response(200)
            self.send_header("Content-Type", SITE_TYPES[pathlib.PurePosixPath(path).suffix])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass  # quiet: one line per request is noise here

    return http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)


# ----------------------------------------------------------------------------------------------------
# Command line

def parse_args(argv):
    p = common.ArgumentParser(prog="leaderboard.py", epilog=__doc__.split("Exit codes")[0],
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
    p.add_argument("--serve", nargs="?", const=8000, type=common.parse_count, metavar="PORT",
                   help="serve the page of --html on localhost (default port 8000)")
    # Marin's site views; these outputs change nothing else (the README tables come from records/ alone)
    p.add_argument("--marin_runs", metavar="RUNS.json",
                   help="Marin's site data (data/runs.json of github.com/marin-community/speedrun) beside the records, "
                        "in the views; alone: print the views")
    p.add_argument("--x", choices=tuple(X_AXES), default="model",
                   help="FLOPs axis of the All runs, Scaling and relative views (default: model, as Marin's site)")
    p.add_argument("--views", action="store_true", help="print the All runs, Scaling and relative views (Markdown)")
    p.add_argument("--json", metavar="FILE", help="write every table and view as JSON")
    p.add_argument("--html", metavar="DIR", help="write the static site: DIR/index.html, its script and the plot")
    return p.parse_args(argv)


def run(argv):
    args = parse_args(argv)
    readme = pathlib.Path(args.readme)
    if args.export_marin is not None:
        out = export_marin(args.export_marin)
        print(f"wrote {out}: submit it to Marin with the run (experiments/speedrun/<run name>/{MARIN_NAME})")
        return 0
    if args.serve is not None:
        if args.marin_runs:
            load_marin_site_runs(args.marin_runs)  # a bad file is one error line now, not one per request
        server = make_server(args.records, readme.parent, args.serve, args.marin_runs, args.x)
        print(f"serving the leaderboard on http://localhost:{server.server_address[1]} (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        return 0
    if args.marin_runs or args.views or args.json or args.html:
        return write_views(args)
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
        common.write_file_atomic(readme, new.encode("utf-8"))  # newlines as read: a CRLF README stays CRLF
    if svg is not None:
        common.write_file_atomic(args.plot, svg.encode("utf-8"))
    for p in problems:
        print(f"skipped invalid: {p}", file=sys.stderr)
    print(f"{len(runs)} run(s) in {n_rows} row(s) across {len(tables)} table(s); "
          f"{readme} {'updated' if new != old else 'already up to date'}" + (f"; plot in {args.plot}" if svg else ""))
    return 0


def write_views(args):
    """--views, --json, --html, --marin_runs: the views of the valid records (and Marin's runs), written where
    asked (printed when no file is named); the README is not touched."""
    runs, problems = load_records(args.records)
    if args.marin_runs:
        runs += load_marin_site_runs(args.marin_runs)
    for p in problems:
        print(f"skipped invalid: {p}", file=sys.stderr)
    link_base = pathlib.Path(args.html) if args.html else pathlib.Path(args.readme).parent
    if args.html:  # the record links in the page, relative to the page
        link_base.mkdir(parents=True, exist_ok=True)
        print(f"wrote {write_site(args.html, build_tables(runs, link_base.resolve()), problems, args.x)}")
    tables = build_tables(runs, pathlib.Path(args.readme).parent)
    if args.json:
        data = json.dumps(leaderboard_data(tables, problems, args.x), indent=1, allow_nan=False, sort_keys=True)
        common.write_file_atomic(args.json, (data + "\n").encode("utf-8"))
        print(f"wrote {args.json}")
    if args.views or not (args.json or args.html):
        print(render_views_markdown(tables, args.x), end="")
    return 0


def main(argv=None):
    return common.run_main("leaderboard.py", run, argv)


if __name__ == "__main__":
    sys.exit(main())
