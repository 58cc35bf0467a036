"""Tests of judge.py against a real local HTTP server process (tests/fake_judge_server.py) that answers with
planned grades and planned faults: 429 with Retry-After, 500, replies without scores, answers too slow."""
import collections
import csv
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

import judge
import fake_judge_server as fake
from helpers import ROOT, byte_spec, tiny_config

SERVER = ROOT / "tests" / "fake_judge_server.py"
KEY = "sk-test-5ecret-d0-not-leak"
PROGRESS_LINE = re.compile(r"^(grading|generating): +\d+%\|")
FAST = ["--backoff=0.01", "--timeout=0.6", "--retries=4"]  # tiny retry sleeps; the slow fault is 1.5 s


# -----------------------------------------------------------------------------
# helpers

class Server:
    """The fake judge server in its own process; base_url points at its real socket."""

    def __init__(self, log, *flags):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(SERVER), f"--log={self.log}", "--slow_seconds=1.5", *flags],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("port "), line
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/v1"

    def events(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(l) for l in self.log.read_text().splitlines() if l.strip()]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def server_factory(tmp_path):
    servers = []

    def start(*flags):
        servers.append(Server(tmp_path / f"server{len(servers)}.jsonl", *flags))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def port_of(server) -> int:
    """A server's port: a restarted server listens there, at the same --base_url (part of the cache key)."""
    return int(server.base_url.rsplit(":", 1)[1].split("/")[0])


def run_judge(*args, env_key=KEY, wait=True):
    env = {k: v for k, v in os.environ.items() if k != "JUDGE_KEY"}
    env["HF_HUB_OFFLINE"] = "1"  # the hub loaders must fail fast and clearly, not hang, without a network
    env["OMP_NUM_THREADS"] = "1"  # a tiny model on shared cores: extra threads only contend
    if env_key is not None:
        env["JUDGE_KEY"] = env_key
    cmd = [sys.executable, str(ROOT / "judge.py"), "--api_key_env=JUDGE_KEY", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    # stderr also carries the progress bars; the error itself is one line, the last
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip() and not PROGRESS_LINE.match(l)]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == lines[0] and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def make_items(n_prompts=8, samples=3):
    items = []
    for p in range(n_prompts):
        for s in range(samples):
            items.append({"prompt": judge.DEFAULT_PROMPTS[p], "completion": f" went to the park with friend number {p * 10 + s} and"
                                                          f" they had fun all day. The end."})
    return items


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def planned(model, item, protocol=judge.PAPER):
    return fake.plan(model, protocol.user_message(item["prompt"], item["completion"]))


def sha_of(model, item, protocol=judge.PAPER):
    return fake.content_sha(model, protocol.user_message(item["prompt"], item["completion"]))


def expected_stats(values):
    """An independent mean / std / normal 95% CI with numpy."""
    a = np.asarray(values, dtype=np.float64)
    half = statistics.NormalDist().inv_cdf(0.975) * a.std(ddof=1) / math.sqrt(len(a))
    return a.mean(), a.std(ddof=1), (a.mean() - half, a.mean() + half)


def answered_grades(server) -> collections.Counter:
    """How many times the server sent the answer that ends a grade, per (model, story)."""
    return collections.Counter((e["model"], e["sha"]) for e in server.events() if e["event"] == "answer" and e["final"])


def cache_keys(cache_dir) -> list[str]:
    path = cache_dir / "grades.jsonl"
    return [json.loads(l)["key"] for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


# -----------------------------------------------------------------------------
# parsing, retry timing and statistics: pure functions

def test_parse_grades_forms_and_last_match_wins():
    standard = "Nice story.\nGrammar: 8/10\nCreativity: 6/10\nConsistency: 9/10\nPlot: 7/10\nAge group: B"
    assert judge.parse_grades(standard) == {"grammar": 8, "creativity": 6, "consistency": 9, "plot": 7, "age_group": "B"}
    fancy = ("The grammar has 2 mistakes and the plot: 3 events. Grammar: 4.\n**Grammar:** 7 out of 10, "
             "**Creativity**: 5.5/10, Consistency (with the beginning) 10 / 10, Plot = 3\nAge group: **C** (6-7)")
    assert judge.parse_grades(fancy) == {"grammar": 7, "creativity": 5.5, "consistency": 10, "plot": 3, "age_group": "C"}
    # a number without a separator or '/10' is prose, not a grade; out-of-range numbers are not grades
    assert judge.parse_grades("The grammar has 2 mistakes. Plot: 12/10")["grammar"] is None
    assert judge.parse_grades("The grammar has 2 mistakes. Plot: 12/10")["plot"] is None
    # the age as a range when no letter is given; nothing at all when nothing is said
    assert judge.parse_grades("The student's age group is probably 8-9.")["age_group"] == "D"
    assert judge.parse_grades("A lovely story. Based on the words, a young student.") == \
        {"grammar": None, "creativity": None, "consistency": None, "plot": None, "age_group": None}


def test_retry_after_and_backoff():
    assert judge.parse_retry_after("3") == 3.0
    assert judge.parse_retry_after(None) is None and judge.parse_retry_after("soon") is None
    in_ten = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))
    assert 8 <= judge.parse_retry_after(in_ten) <= 10
    assert judge.retry_delay(3, None, 0.5) == 4.0                   # 0.5 * 2^3
    assert judge.retry_delay(3, 7.0, 0.5) == 7.0                    # the server's Retry-After wins


def test_summarize_matches_numpy():
    values = [7, 8, 6.5, 9, 3, 8, 8, 7.25]
    s = judge.summarize(values)
    mean, std, ci = expected_stats(values)
    assert s["n"] == 8 and s["mean"] == pytest.approx(mean) and s["std"] == pytest.approx(std)
    assert s["ci95"] == pytest.approx(list(ci))
    assert judge.summarize([5])["ci95"] is None and judge.summarize([])["mean"] is None


def test_default_prompts_are_many_distinct_and_cut_mid_sentence():
    prompts = judge.DEFAULT_PROMPTS
    assert len(prompts) >= 48 and len(set(prompts)) == len(prompts)
    for p in prompts:
        assert not p.rstrip().endswith((".", "!", "?")), p     # cut mid-sentence
        assert 80 < len(p) < 400 and p == p.strip()
    assert sum('"' in p for p in prompts) >= 10                   # plenty of dialogue


def test_prompt_loaders(tmp_path):
    # the TinyStories 'Evaluation prompts.yaml' form: a YAML list of block strings
    yaml_file = tmp_path / "Evaluation prompts.yaml"
    yaml_file.write_text('- |-\n  Once upon a time, there was a dog. He\n- |-\n  "Look!" said Mia. "A\n\n  big\n')
    assert judge.load_prompts(str(yaml_file)) == ["Once upon a time, there was a dog. He", '"Look!" said Mia. "A\n\nbig']
    csv_file = tmp_path / "submission.csv"
    csv_file.write_text('id,prompt,completion\n1,"One day, Tom, who",x\n2,Ann said,y\n3,"One day, Tom, who",z\n')
    assert judge.load_prompts(str(csv_file)) == ["One day, Tom, who", "Ann said"]
    assert judge.load_prompts("default") == judge.DEFAULT_PROMPTS
    bad = tmp_path / "bad.csv"
    bad.write_text("text\nhello\n")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        judge.load_prompts(str(bad))


def test_hub_prompts_fail_with_one_clear_line_offline(tmp_path):
    ckpt = tmp_path / "never-read.pt"
    ckpt.write_bytes(b"")
    for spec in ("tinystories", "hf:someone/prompts-set"):
        proc = run_judge(f"--ckpt={ckpt}", f"--prompts={spec}", "--model=j", f"--cache_dir={tmp_path}")
        assert_one_line_error(proc, "cannot fetch it from the Hugging Face hub", "local path")


# -----------------------------------------------------------------------------
# the whole run against a faulty server

def test_faulty_server_run_completes_with_the_servers_scores(tmp_path, server_factory):
    server = server_factory(f"--require_key={KEY}")
    items = make_items()
    models = ["judge-a", "judge-b"]
    kinds = collections.Counter(planned(m, it)["kind"] for m in models for it in items)
    assert set(kinds) == set(fake.KINDS), kinds   # every fault happens at least once in this run
    completions = write_jsonl(tmp_path / "submission.jsonl", items)
    record = tmp_path / "record"
    record.mkdir()
    (record / "results.json").write_text(json.dumps({"schema": "speedrun-record/1", "name": "r", "judge": None}))
    args = [f"--completions={completions}", f"--base_url={server.base_url}", "--model=judge-a", "--model=judge-b",
            "--concurrency=6", f"--cache_dir={tmp_path / 'cache'}", f"--record={record}", *FAST]
    proc = run_judge(*args)
    assert proc.returncode == 0, proc.stderr

    report = json.loads((record / "judge.json").read_text())
    # per judge: the means are what the server gave, the unparseable answers are counted as such
    pooled_rows = []
    for it in items:
        plans = [planned(m, it) for m in models]
        ok = [p["scores"] for p in plans if p["scores"] is not None]
        if ok:
            pooled_rows.append({c: np.mean([s[c] for s in ok]) for c in judge.CATEGORIES})
    for m in models:
        plans = [planned(m, it) for it in items]
        ok = [p["scores"] for p in plans if p["scores"] is not None]
        got = report["per_judge"][m]
        assert got["n"] == len(ok) and got["unparsed"] == len(items) - len(ok)
        for c in judge.CATEGORIES:
            mean, std, ci = expected_stats([s[c] for s in ok])
            assert got["scores"][c]["mean"] == pytest.approx(mean) and got["scores"][c]["std"] == pytest.approx(std)
            assert got["scores"][c]["ci95"] == pytest.approx(list(ci))
        ages = collections.Counter(p["age_group"] for p in plans if p["scores"] is not None)
        assert got["age_groups"] == {**{a: ages.get(a, 0) for a in "ABCDEF"}, "unknown": len(items) - len(ok)}
    # pooled: items averaged over judges first; the top level is the record's judge block
    assert report["n"] == len(pooled_rows) and report["judges"] == models
    for c in judge.CATEGORIES:
        assert report[c] == pytest.approx(np.mean([r[c] for r in pooled_rows]))
    overall = [np.mean([r[c] for c in judge.CATEGORIES]) for r in pooled_rows]
    assert report["overall"] == pytest.approx(np.mean(overall))
    assert report["ci95"] == pytest.approx(list(expected_stats(overall)[2]))
    assert list(report)[:8] == ["judges", "n", "grammar", "creativity", "consistency", "plot", "overall", "ci95"]
    # per-item rows: the story, the judge, the scores or "unparsed"
    assert len(report["items"]) == len(items) * len(models)
    for row in report["items"]:
        p = planned(row["judge"], row)
        assert row["scores"] == ("unparsed" if p["scores"] is None else {c: p["scores"][c] for c in judge.CATEGORIES})

    # the record's judge block, the rest of results.json kept
    results = json.loads((record / "results.json").read_text())
    assert results["schema"] == "speedrun-record/1" and results["name"] == "r"
    assert results["judge"] == {k: report[k] for k in ("judges", "n", *judge.CATEGORIES, "overall", "ci95", "protocol")}
    assert results["judge"]["protocol"] == "tinystories-paper/1"

    # every grade answered exactly once; the 429s were waited out as long as Retry-After said
    answered = answered_grades(server)
    assert set(answered) == {(m, sha_of(m, it)) for m in models for it in items}
    assert set(answered.values()) == {1}
    events = server.events()
    for e in (e for e in events if e["event"] == "429"):
        retry = next(r for r in events if r.get("sha") == e["sha"] and r["time"] > e["time"] and r["event"] != "429")
        assert retry["time"] - e["time"] >= e["retry_after"]
    # token usage: the totals printed are the server's
    answers = [e for e in events if e["event"] == "answer"]
    prompt_tokens = sum(e["usage"]["prompt_tokens"] for e in answers)
    completion_tokens = sum(e["usage"]["completion_tokens"] for e in answers)
    assert f"tokens this run: {prompt_tokens:,} prompt + {completion_tokens:,} completion in {len(answers):,} requests" \
        in proc.stdout
    # the key is sent, never printed nor written
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != server.log.name:
            assert KEY not in path.read_text(errors="replace"), path
    assert KEY not in proc.stdout + proc.stderr

    # a re-run with the same arguments sends no request: the endpoint may even be gone
    before = len(server.events())
    server.stop()
    again = run_judge(*args)
    assert again.returncode == 0, again.stderr
    assert "in 0 requests" in again.stdout and len(server.events()) == before
    report2 = json.loads((record / "judge.json").read_text())
    assert {k: v for k, v in report2.items() if k not in ("usage_this_run", "settings")} == \
        {k: v for k, v in report.items() if k not in ("usage_this_run", "settings")}


def test_crash_mid_run_resumes_without_grading_twice(tmp_path, server_factory):
    items = make_items(6, 2)
    completions = write_jsonl(tmp_path / "submission.jsonl", items)
    cache_dir = tmp_path / "cache"
    args = [f"--completions={completions}", "--model=judge-a", "--concurrency=3", f"--cache_dir={cache_dir}",
            f"--out={tmp_path / 'judge.json'}", "--backoff=0.01", "--timeout=5", "--retries=2"]
    hanging = server_factory("--hang_after=5")
    proc = run_judge(f"--base_url={hanging.base_url}", *args, wait=False)
    deadline = time.time() + 60
    while len(cache_keys(cache_dir)) < 5 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # a crash: no cleanup, no final report
    proc.communicate()
    first = cache_keys(cache_dir)
    assert len(first) == 5 and not (tmp_path / "judge.json").exists()
    with open(cache_dir / "grades.jsonl", "a") as f:
        f.write('{"key": "torn-by-the-cra')  # what a kill during a write leaves

    hanging.stop()
    fresh = server_factory(f"--port={port_of(hanging)}")  # the same --base_url
    proc = run_judge(f"--base_url={fresh.base_url}", *args)
    assert proc.returncode == 0, proc.stderr
    second = answered_grades(fresh)
    graded_before = {(m, s) for (m, s), n in answered_grades(hanging).items()}
    assert not graded_before & set(second)                     # nothing graded twice after the restart
    assert graded_before | set(second) == {("judge-a", sha_of("judge-a", it)) for it in items}
    assert set(second.values()) == {1}
    report = json.loads((tmp_path / "judge.json").read_text())
    ok = [planned("judge-a", it)["scores"] for it in items if planned("judge-a", it)["scores"]]
    assert report["n"] == len(ok) and report["grammar"] == pytest.approx(np.mean([s["grammar"] for s in ok]))
    keys = cache_keys(cache_dir)
    assert len(keys) == len(set(keys)) == len(items)


def test_endpoint_lost_mid_run_keeps_what_was_graded(tmp_path, server_factory):
    items = make_items(6, 2)
    completions = write_jsonl(tmp_path / "submission.jsonl", items)
    cache_dir = tmp_path / "cache"
    args = [f"--completions={completions}", "--model=judge-a", "--concurrency=2", f"--cache_dir={cache_dir}", *FAST]
    dying = server_factory("--exit_after=4")
    proc = run_judge(f"--base_url={dying.base_url}", *args)
    assert_one_line_error(proc, "cannot reach", "saved in", "re-run")
    dying.proc.wait(timeout=10)
    graded = answered_grades(dying)
    assert len(graded) == 4
    settings = judge.grading_settings(judge.PAPER, dying.base_url, 0.0, 600, "auto")
    assert sorted(cache_keys(cache_dir)) == sorted(judge.cache_key("judge-a", it["prompt"], it["completion"], settings)
                                                   for it in items if ("judge-a", sha_of("judge-a", it)) in graded)
    fresh = server_factory(f"--port={port_of(dying)}")  # the same --base_url
    proc = run_judge(f"--base_url={fresh.base_url}", *args, f"--out={tmp_path / 'j.json'}")
    assert proc.returncode == 0, proc.stderr
    assert not set(graded) & set(answered_grades(fresh)) and len(cache_keys(cache_dir)) == len(items)


# -----------------------------------------------------------------------------
# bad input: one line, exit 2

def test_bad_inputs_exit_2_with_one_line(tmp_path, server_factory):
    items = write_jsonl(tmp_path / "ok.jsonl", make_items(2, 1))
    common = ["--model=judge-a", f"--cache_dir={tmp_path / 'cache'}", *FAST]
    # no key in the named variable
    proc = run_judge(f"--completions={items}", *common, env_key="")
    assert_one_line_error(proc, "no API key in $JUDGE_KEY", "--api_key_env=")
    # an endpoint nobody listens on
    proc = run_judge(f"--completions={items}", "--base_url=http://127.0.0.1:9/v1", *common)
    assert_one_line_error(proc, "cannot reach http://127.0.0.1:9/v1/chat/completions")
    # completions files without the columns
    no_col = tmp_path / "sub.csv"
    no_col.write_text("prompt,text\nOnce,upon\n")
    assert_one_line_error(run_judge(f"--completions={no_col}", *common), "sub.csv", "'completion' column")
    no_field = write_jsonl(tmp_path / "sub.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "a"}])
    assert_one_line_error(run_judge(f"--completions={no_field}", *common), "sub.jsonl", "line 2", "'completion'")
    # the server says the key or the model is wrong: not retried, said in one line, key redacted
    server = server_factory(f"--require_key={KEY}")
    proc = run_judge(f"--completions={items}", f"--base_url={server.base_url}", *common, env_key="wrong-key")
    assert_one_line_error(proc, "HTTP 401", "--api_key_env")
    proc = run_judge(f"--completions={items}", f"--base_url={server.base_url}", "--model=missing-model",
                     f"--cache_dir={tmp_path / 'cache'}")
    assert_one_line_error(proc, "HTTP 404", "missing-model")
    # a record folder without results.json fails before any work
    proc = run_judge(f"--completions={items}", f"--base_url={server.base_url}", *common, f"--record={tmp_path}")
    assert_one_line_error(proc, "results.json", "--record")
    # the arguments themselves
    assert_one_line_error(run_judge(*common), "exactly one of --ckpt")
    assert_one_line_error(run_judge(f"--completions={items}", "--samples=0", *common), "--samples")
    assert_one_line_error(run_judge(f"--ckpt={tmp_path / 'nope.pt'}", *common), "nope.pt")
    # not a URL; a cache folder that cannot be made (a file is in the way)
    assert_one_line_error(run_judge(f"--completions={items}", "--base_url=localhost:8000/v1", *common), "--base_url")
    proc = run_judge(f"--completions={items}", f"--base_url={server.base_url}", "--model=judge-a", *FAST,
                     f"--cache_dir={no_col}/cache")
    assert_one_line_error(proc, "sub.csv")
    # a bad --device says so (not that the checkpoint is corrupt)
    ckpt = tmp_path / "tiny.pt"
    tiny_checkpoint(ckpt)
    assert_one_line_error(run_judge(f"--ckpt={ckpt}", "--device=gpu0", *common), "--device", "gpu0")
    # a local server that needs no key: name the variable empty
    keyless = server_factory()
    proc = run_judge(f"--completions={items}", f"--base_url={keyless.base_url}", *common, "--api_key_env=",
                     f"--out={tmp_path / 'j.json'}", env_key=None)
    assert proc.returncode == 0, proc.stderr
    # no item graded: judge.json is written, but no score-less block goes into the record
    unparsable = [it for it in make_items(40, 1) if planned("judge-a", it)["kind"] == "never_scores"][:1]
    assert unparsable, "the fake server's plan should give some never_scores items"
    record = tmp_path / "record"
    record.mkdir()
    (record / "results.json").write_text('{"judge": null}')
    proc = run_judge(f"--completions={write_jsonl(tmp_path / 'bad.jsonl', unparsable)}", f"--base_url={keyless.base_url}",
                     *common, "--api_key_env=", f"--record={record}", env_key=None)
    assert_one_line_error(proc, "no item got parseable grades")
    assert json.loads((record / "results.json").read_text()) == {"judge": None}
    assert json.loads((record / "judge.json").read_text())["n"] == 0


# -----------------------------------------------------------------------------
# generation from a checkpoint

BYTES_VOCAB = 257   # the 256 single bytes, then the delimiter (id 256): a tokenizer small enough for 2 cores


def byte_tokenizer():
    import prepare
    spec = byte_spec()
    return spec, prepare.encoding_from_spec(spec)


def tiny_checkpoint(path, rig_stop_after=None):
    """A 2-layer GPT on a byte-level tokenizer. rig_stop_after=(context, k): make the delimiter win exactly
    where the greedy continuation of context would pick its k-th token, so generation must stop there."""
    import torch
    import model as model_lib
    torch.manual_seed(0)
    config = tiny_config(vocab_size=model_lib.padded_vocab_size(BYTES_VOCAB), n_layer=2, n_head=2, n_kv_head=1,
                         block_size=128)
    gpt = model_lib.GPT(config)
    delimiter = BYTES_VOCAB - 1
    if rig_stop_after is not None:
        context, k = rig_stop_after
        target = greedy_reference(gpt, context, k + 1, stop=None)[k]
        with torch.no_grad():  # the delimiter's row a little longer than the target's: it wins where the target would
            gpt.lm_head.weight[delimiter] = gpt.lm_head.weight[target] * 1.05
    model_lib.save_checkpoint(path, gpt, config, byte_tokenizer()[0], step=1)
    return gpt


def greedy_reference(gpt, context, max_new, stop):
    """Greedy decoding the slow, obvious way: a full forward pass per token, no KV cache, no batching."""
    import torch
    tokens, out = list(context), []
    for _ in range(max_new):
        nxt = int(gpt(torch.tensor([tokens]))[0, -1, :BYTES_VOCAB].argmax())
        if nxt == stop:
            break
        out.append(nxt)
        tokens.append(nxt)
    return out


@pytest.fixture
def one_thread():
    """A tiny model on 2 shared cores runs 30x faster on one thread than fighting for two."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_generation_samples_start_after_prompt_and_stop_at_delimiter_or_cap(tmp_path, one_thread):
    _, enc = byte_tokenizer()
    delimiter = BYTES_VOCAB - 1
    prompts = ["Once upon a time, there was a little dog who", "Mia said, \"Can we go to the"]
    contexts = [[delimiter] + enc.encode_ordinary(p) for p in prompts]
    ckpt = tmp_path / "tiny.pt"
    gpt = tiny_checkpoint(ckpt, rig_stop_after=(contexts[0], 3))

    # greedy: each completion is the model's own continuation of [delimiter] + prompt, stopped at the delimiter
    items = judge.generate_completions(str(ckpt), prompts, samples=2, max_new_tokens=12, temperature=0.0, top_k=None,
                                       top_p=None, seed=1, batch_size=3, device="cpu")
    assert [(it["prompt_id"], it["sample"]) for it in items] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    refs = [greedy_reference(gpt, c, 12, stop=delimiter) for c in contexts]
    assert len(refs[0]) == 3                    # the rigged delimiter ends prompt 0 early ...
    assert len(refs[1]) == 12                   # ... prompt 1 runs to the cap
    for it in items:
        assert it["completion"] == enc.decode(refs[it["prompt_id"]]) and it["new_tokens"] == len(refs[it["prompt_id"]])

    # sampling: --samples per prompt, seeded, never longer than the cap, never a padding id
    kw = dict(samples=3, max_new_tokens=6, temperature=1.0, top_k=None, top_p=0.95, batch_size=4, device="cpu")
    a = judge.generate_completions(str(ckpt), prompts, seed=7, **kw)
    b = judge.generate_completions(str(ckpt), prompts, seed=7, **kw)
    c = judge.generate_completions(str(ckpt), prompts, seed=8, **kw)
    assert len(a) == 6 and a == b and a != c
    assert all(it["new_tokens"] <= 6 for it in a)
    assert len({it["completion"] for it in a if it["prompt_id"] == 1}) > 1


def test_judge_a_checkpoint_end_to_end_and_reuse(tmp_path, server_factory, one_thread):
    ckpt = tmp_path / "tiny.pt"
    tiny_checkpoint(ckpt)
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('prompt\n"Tom had a red ball, and he"\n"The cat sat by the door and"\n')
    cache_dir = tmp_path / "cache"
    args = [f"--ckpt={ckpt}", f"--prompts={prompts}", "--samples=3", "--max_new_tokens=8", "--model=judge-a",
            f"--cache_dir={cache_dir}", f"--out={tmp_path / 'judge.json'}", "--device=cpu", *FAST]
    # the endpoint is down: exit 2, but the generated completions are kept
    proc = run_judge(*args, "--base_url=http://127.0.0.1:9/v1")
    assert_one_line_error(proc, "cannot reach")
    saved = list(cache_dir.glob("completions_*.jsonl"))
    assert len(saved) == 1 and len(saved[0].read_text().splitlines()) == 1 + 6
    # with a server: the saved completions are reused, all six graded
    server = server_factory()
    proc = run_judge(*args, f"--base_url={server.base_url}")
    assert proc.returncode == 0, proc.stderr
    assert "reusing 6 saved completions" in proc.stdout
    report = json.loads((tmp_path / "judge.json").read_text())
    assert len(report["items"]) == 6
    assert collections.Counter(r["prompt_id"] for r in report["items"]) == {0: 3, 1: 3}
    # other generation arguments: new completions, a new file
    proc = run_judge(*[a for a in args if a != "--samples=3"], "--samples=1", f"--base_url={server.base_url}")
    assert proc.returncode == 0, proc.stderr
    assert len(list(cache_dir.glob("completions_*.jsonl"))) == 2


def test_generate_only_writes_a_submission_file_that_judges_back(tmp_path, server_factory, one_thread):
    ckpt = tmp_path / "tiny.pt"
    tiny_checkpoint(ckpt)
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('prompt\n"Tom had a red ball, and he"\n"The cat sat by the door and"\n')
    common = [f"--ckpt={ckpt}", f"--prompts={prompts}", "--samples=2", "--max_new_tokens=8",
              f"--cache_dir={tmp_path / 'cache'}", "--device=cpu"]
    # no judge, no key, no endpoint: only the completions, in the format --completions reads
    for name in ("subm.csv", "subm.jsonl"):
        proc = run_judge(*common, f"--generate_only={tmp_path / name}", env_key=None)
        assert proc.returncode == 0, proc.stderr
        items = judge.load_completions(tmp_path / name)
        assert [(it["prompt_id"], it["sample"]) for it in items] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert {it["prompt"] for it in items} == {"Tom had a red ball, and he", "The cat sat by the door and"}
    assert judge.load_completions(tmp_path / "subm.csv") == judge.load_completions(tmp_path / "subm.jsonl")
    # the file judges like any submission
    server = server_factory()
    proc = run_judge(f"--completions={tmp_path / 'subm.csv'}", "--model=judge-a", f"--base_url={server.base_url}",
                     f"--cache_dir={tmp_path / 'cache'}", f"--out={tmp_path / 'judge.json'}", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((tmp_path / "judge.json").read_text())["items"]) == 4
    # a file name that is neither CSV nor JSONL: one clear line
    assert_one_line_error(run_judge(*common, f"--generate_only={tmp_path / 'subm.txt'}", env_key=None), ".csv or .jsonl")


# -----------------------------------------------------------------------------
# nothing leaked, nothing inflated, nothing that hangs (each of these failed on the judge.py before them)

def test_parse_grades_never_reads_the_scale_as_a_score():
    # an echoed template, a 'not applicable', a question mark, a word: the '10' of '/10' is not a grade
    for answer in ("Grammar: X/10\nCreativity: X/10\nConsistency: X/10\nPlot: X/10\nAge group: L",
                   "Grammar: N/A/10\nCreativity: ?/10\nConsistency: seven/10\nPlot: -/10"):
        assert {c: judge.parse_grades(answer)[c] for c in judge.CATEGORIES} == dict.fromkeys(judge.CATEGORIES)
    # a score on another scale is not a score out of 10
    assert judge.parse_grades("Grammar: 4/5")["grammar"] is None
    # the forms a judge really writes still parse
    assert judge.parse_grades("Grammar: 7/10")["grammar"] == 7
    assert judge.parse_grades("Grammar: 7")["grammar"] == 7
    assert judge.parse_grades("grammar 8 out of 10")["grammar"] == 8
    assert judge.parse_grades("Grammar: 10/10, plot: 9.5 / 10")["grammar"] == 10
    # an answer that is not text at all is unparsed, not a crash
    assert judge.parse_grades([{"text": "Grammar: 7/10"}]) == {**dict.fromkeys(judge.CATEGORIES), "age_group": None}


def test_redirects_are_refused_and_the_key_never_follows(tmp_path, server_factory):
    items = write_jsonl(tmp_path / "ok.jsonl", make_items(1, 1))
    target = server_factory("--echo_key")  # another port: another origin, which would plant a 10/10 grade
    for code in (301, 302, 303, 307, 308):
        mover = server_factory(f"--redirect={code}:{target.base_url}/chat/completions")
        cache_dir = tmp_path / f"cache{code}"
        proc = run_judge(f"--completions={items}", f"--base_url={mover.base_url}", "--model=judge-a",
                         f"--cache_dir={cache_dir}", f"--out={tmp_path / 'j.json'}", *FAST)
        assert_one_line_error(proc, f"HTTP {code}", "redirect", target.base_url.split("//")[1].split("/")[0])
        assert [e["event"] for e in mover.events()] == ["redirect"]   # refused at once, not retried
        assert cache_keys(cache_dir) == [] and not (tmp_path / "j.json").exists()
    assert target.events() == []   # the key (and the POST turned into a GET) never went to the other host


def test_the_key_is_redacted_from_everything_written_and_printed(tmp_path, server_factory):
    server = server_factory(f"--require_key={KEY}", "--echo_key")  # quotes the Authorization header it got
    items = write_jsonl(tmp_path / "ok.jsonl", make_items(3, 2))
    record = tmp_path / "record"
    record.mkdir()
    (record / "results.json").write_text(json.dumps({"name": "r", "judge": None}))
    proc = run_judge(f"--completions={items}", f"--base_url={server.base_url}", "--model=judge-a",
                     f"--cache_dir={tmp_path / 'cache'}", f"--record={record}", *FAST)
    assert proc.returncode == 0, proc.stderr
    answers = [a for row in json.loads((record / "judge.json").read_text())["items"] for a in row["answers"]]
    assert answers and all("Bearer ***" in a for a in answers)   # the answers are kept, the key is not
    # a wrong key echoed in the 401 body is not printed either
    wrong = "sk-wrong-9f8e7d6c5b4a"
    proc2 = run_judge(f"--completions={items}", f"--base_url={server.base_url}", "--model=judge-a",
                      f"--cache_dir={tmp_path / 'cache2'}", *FAST, env_key=wrong)
    assert_one_line_error(proc2, "HTTP 401")
    # a key pasted into --api_key_env, or given as a flag, is refused without being echoed
    pasted = "sk-proj-AbC123xYz789DeF456"
    proc3 = run_judge(f"--completions={items}", f"--base_url={server.base_url}", "--model=judge-a",
                      f"--api_key_env={pasted}", f"--cache_dir={tmp_path / 'cache3'}")
    assert_one_line_error(proc3, "--api_key_env takes the NAME")
    proc4 = run_judge(f"--completions={items}", f"--base_url={server.base_url}", "--model=judge-a",
                      f"--api_key={pasted}", f"--cache_dir={tmp_path / 'cache3'}")
    assert_one_line_error(proc4, "no key on the command line")
    # credentials in --base_url are neither printed nor stored
    secret = "s3cret-Pa55word"
    proc5 = run_judge(f"--completions={items}", f"--base_url=http://user:{secret}@127.0.0.1:9/v1", "--model=judge-a",
                      f"--cache_dir={tmp_path / 'cache4'}", f"--out={tmp_path / 'j5.json'}", *FAST)
    assert_one_line_error(proc5, "--base_url holds a user name or password")
    outputs = "".join(p.stdout + p.stderr for p in (proc, proc2, proc3, proc4, proc5))
    for needle in (KEY, wrong, pasted, secret):
        assert needle not in outputs
        for path in tmp_path.rglob("*"):
            if path.is_file() and not path.name.startswith("server"):
                assert needle not in path.read_text(errors="replace"), path


def test_waits_are_bounded_retry_after_and_a_dripping_server(tmp_path, server_factory):
    # Retry-After: 86400 (or an HTTP date a day ahead) waits MAX_WAIT = 60 s at most, as does a long backoff
    assert judge.retry_delay(0, judge.parse_retry_after("86400"), 1.0) == 60
    in_a_day = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 86400))
    assert judge.retry_delay(0, judge.parse_retry_after(in_a_day), 1.0) == 60
    assert judge.retry_delay(30, None, 1.0) == 60 and judge.parse_retry_after("inf") is None
    assert judge.MAX_WAIT == 60
    # a server that sends its answer a byte every 0.2 s: never a silent second, but --timeout=1 is the
    # deadline of the whole answer, so each try is cut after 1 s and the run ends in seconds, not minutes
    dripping = server_factory("--drip=0.2")
    items = write_jsonl(tmp_path / "ok.jsonl", make_items(1, 1))
    start = time.time()
    proc = run_judge(f"--completions={items}", f"--base_url={dripping.base_url}", "--model=judge-a",
                     f"--cache_dir={tmp_path / 'cache'}", "--timeout=1", "--retries=1", "--backoff=0.01", wait=False)
    try:
        stdout, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("judge.py waited on a dripping server past 20 s with --timeout=1 --retries=1")
    assert time.time() - start < 15
    assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr),
                          "failed 2 times", "no complete answer within --timeout=1s")
    assert [e["event"] for e in dripping.events()] == ["drip", "drip"]


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_at_once_and_keeps_the_grades(tmp_path, server_factory, presses):
    items = make_items(6, 1)
    completions = write_jsonl(tmp_path / "submission.jsonl", items)
    cache_dir = tmp_path / "cache"
    args = [f"--completions={completions}", "--model=judge-a", "--concurrency=2", f"--cache_dir={cache_dir}",
            f"--out={tmp_path / 'judge.json'}", "--backoff=0.01", "--timeout=60", "--retries=2"]
    hanging = server_factory("--hang_after=3")   # three grades, then it never answers again
    proc = run_judge(f"--base_url={hanging.base_url}", *args, wait=False)
    deadline = time.time() + 60
    while (len(cache_keys(cache_dir)) < 3 or sum(e["event"] == "refused" for e in hanging.events()) < 2) \
            and time.time() < deadline:
        time.sleep(0.05)
    assert len(cache_keys(cache_dir)) == 3    # both workers now wait on answers that never come
    start = time.time()
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
    try:
        stdout, stderr = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"judge.py did not stop within 10 s of {presses} Ctrl-C (--timeout=60)")
    assert time.time() - start < 5
    assert proc.returncode in ((130,) if presses == 1 else (130, -signal.SIGINT)), stderr
    assert "Traceback" not in stderr
    if presses == 1:
        assert "3 new grades of 6 saved" in stderr and stderr.strip().splitlines()[-1] == "error: judge.py: interrupted"
    assert len(cache_keys(cache_dir)) == 3 and not (tmp_path / "judge.json").exists()
    # the re-run grades only the rest (of a server at the same --base_url: it is part of the cache key)
    hanging.stop()
    fresh = server_factory(f"--port={port_of(hanging)}")
    proc = run_judge(f"--base_url={fresh.base_url}", *args)
    assert proc.returncode == 0, proc.stderr
    assert len(answered_grades(fresh)) == 3 and len(cache_keys(cache_dir)) == 6


@pytest.mark.parametrize("form", ["list", "number"])
def test_an_answer_whose_content_is_not_a_string(tmp_path, server_factory, form):
    """OpenAI-style content parts are joined into the answer's text; content that holds no text at all is
    an unparsed grade. Neither is a traceback."""
    server = server_factory(f"--content={form}")
    items = [it for it in make_items(20, 1) if planned("judge-a", it)["kind"] in ("plain", "fancy")][:3]
    completions = write_jsonl(tmp_path / "ok.jsonl", items)
    proc = run_judge(f"--completions={completions}", f"--base_url={server.base_url}", "--model=judge-a",
                     f"--cache_dir={tmp_path / 'cache'}", f"--out={tmp_path / 'j.json'}", *FAST)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    report = json.loads((tmp_path / "j.json").read_text())
    if form == "list":
        assert report["n"] == 3
        assert report["grammar"] == pytest.approx(np.mean([planned("judge-a", it)["scores"]["grammar"] for it in items]))
    else:
        assert report["n"] == 0 and report["unparsed"] == 3


# -----------------------------------------------------------------------------
# the hackathon's protocol, structured outputs, and its submission file

def requests_of(server) -> list[dict]:
    return [e for e in server.events() if e["event"] == "request"]


def hackathon_items(n_each=2):
    """Items whose planned answers cover the plain, fancy, never-scores and scores-on-follow-up kinds."""
    by_kind = collections.defaultdict(list)
    for it in make_items(40, 1):
        by_kind[planned("judge-a", it, judge.HACKATHON)["kind"]].append(it)
    return [it for kind in ("plain", "fancy", "never_scores", "scores_on_reask") for it in by_kind[kind][:n_each]]


def test_hackathon_protocol_request_bodies_follow_up_and_both_overalls(tmp_path, server_factory):
    server = server_factory()
    items = hackathon_items()
    record = tmp_path / "record"
    record.mkdir()
    (record / "results.json").write_text(json.dumps({"name": "r", "judge": None}))
    proc = run_judge(f"--completions={write_jsonl(tmp_path / 's.jsonl', items)}", f"--base_url={server.base_url}",
                     "--model=judge-a", "--protocol=hackathon", "--structured=off", f"--cache_dir={tmp_path / 'cache'}",
                     f"--record={record}", *FAST)
    assert proc.returncode == 0, proc.stderr
    # the requests: the system prompt, the story as {story_start}***{completion}, temperature 0.1, a short
    # answer, no response_format; the follow-up only where a score was missing, after the first answer
    bodies = [e["body"] for e in requests_of(server)]
    for body in bodies:
        assert body["temperature"] == 0.1 and body["max_tokens"] == 128 and "response_format" not in body
        assert body["messages"][0] == {"role": "system", "content": judge.HACKATHON_SYSTEM}
    firsts = {b["messages"][1]["content"] for b in bodies if len(b["messages"]) == 2}
    assert firsts == {f"{it['prompt']}***{it['completion']}" for it in items}
    follow_ups = [b["messages"] for b in bodies if len(b["messages"]) == 4]
    assert len(follow_ups) == 4   # the never-scores and scores-on-follow-up items, once each
    assert all(m[2]["role"] == "assistant" and m[3] == {"role": "user", "content": judge.HACKATHON_FOLLOWUP}
               for m in follow_ups)
    # the scores: the four categories, overall as their mean, and the judge's own OVERALL beside it
    report = json.loads((record / "judge.json").read_text())
    plans = [planned("judge-a", it, judge.HACKATHON) for it in items]
    ok = [p for p in plans if p["scores"]]
    assert report["n"] == len(ok) == 6 and report["per_judge"]["judge-a"]["parse_rate"] == pytest.approx(6 / 8)
    for c in judge.CATEGORIES:
        assert report[c] == pytest.approx(np.mean([p["scores"][c] for p in ok]))
    assert report["overall"] == pytest.approx(np.mean([np.mean([p["scores"][c] for c in judge.CATEGORIES]) for p in ok]))
    assert report["overall_judge"] == pytest.approx(np.mean([p["overall"] for p in ok]))
    assert "age_groups" not in report
    block = json.loads((record / "results.json").read_text())["judge"]
    assert block["protocol"] == "tinystories-hackathon/1" and block["overall_judge"] == report["overall_judge"]
    assert block["overall"] == pytest.approx(np.mean([block[c] for c in judge.CATEGORIES]))
    # another protocol is other grades: nothing of the hackathon's cache is reused by the paper's
    proc = run_judge(f"--completions={write_jsonl(tmp_path / 's.jsonl', items)}", f"--base_url={server.base_url}",
                     "--model=judge-a", "--structured=off", f"--cache_dir={tmp_path / 'cache'}",
                     f"--out={tmp_path / 'paper.json'}", *FAST)
    assert proc.returncode == 0 and "0 grades reused" in proc.stdout, proc.stderr


@pytest.mark.parametrize("kind, protocol, forms", [
    ("openai", "paper", ["json_schema"]),                                    # taken at once
    ("llama-cpp-python", "hackathon", ["json_schema", "json_object"]),       # 500, then json_object
    ("text-only", "hackathon", ["json_schema", "json_object", None]),        # 400, 400, then free text
])
def test_structured_output_falls_back_once_and_remembers(tmp_path, server_factory, kind, protocol, forms):
    server = server_factory(f"--kind={kind}")
    proto = judge.PROTOCOLS[protocol]
    items = [it for it in make_items(30, 1) if planned("judge-a", it, proto)["kind"] in ("plain", "fancy")][:5]
    proc = run_judge(f"--completions={write_jsonl(tmp_path / 's.jsonl', items)}", f"--base_url={server.base_url}",
                     "--model=judge-a", f"--protocol={protocol}", "--concurrency=1", f"--cache_dir={tmp_path / 'cache'}",
                     f"--out={tmp_path / 'j.json'}", *FAST)
    assert proc.returncode == 0, proc.stderr
    requests = requests_of(server)
    # the forms in the order the server saw them: each refused one once (no retry, no loop), then the one
    # that works for every other request
    seen = [r["form"] for r in requests]
    assert seen == forms + [forms[-1]] * (len(items) - 1)
    schema = proto.json_schema()
    for r in requests:
        body = r["body"]
        if r["form"] == "json_schema":
            assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "grades", "schema": schema}}
        elif r["form"] == "json_object":
            assert body["response_format"] == {"type": "json_object", "schema": schema}
        if r["form"]:   # a JSON answer is asked for in words too, at the end of the system prompt
            assert body["messages"][0]["role"] == "system" and body["messages"][0]["content"].endswith(proto.json_note())
        else:           # free text: the protocol's own messages, nothing about JSON
            assert "response_format" not in body and not any(proto.json_note() in m["content"] for m in body["messages"])
    report = json.loads((tmp_path / "j.json").read_text())
    judge_report = report["per_judge"]["judge-a"]
    assert judge_report["parse_rate"] == 1.0 and judge_report["formats"] == {forms[-1] or "off": len(items)}
    for c in judge.CATEGORIES:
        assert report[c] == pytest.approx(np.mean([planned("judge-a", it, proto)["scores"][c] for it in items]))
    if protocol == "paper":   # the JSON answer's assessment and age group are kept
        ages = collections.Counter(planned("judge-a", it)["age_group"] for it in items)
        assert {k: v for k, v in report["age_groups"].items() if v} == dict(ages)
        assert all(json.loads(row["answers"][0])["assessment"] for row in report["items"])
    # a form asked for by name is not swapped for another: one line when the server refuses it
    if kind == "llama-cpp-python":
        proc = run_judge(f"--completions={write_jsonl(tmp_path / 's.jsonl', items)}", f"--base_url={server.base_url}",
                         "--model=judge-b", "--structured=json_schema", f"--cache_dir={tmp_path / 'cache'}", *FAST)
        assert_one_line_error(proc, "refused response_format json_schema", "--structured=auto")


def test_parse_json_answers():
    labels = judge.HACKATHON.labels
    assert judge.parse_grades('{"grammar": 7, "creativity": "8", "consistency": 6.5, "plot": 9, "overall": 7}', labels) == \
        {"grammar": 7, "creativity": 8, "consistency": 6.5, "plot": 9, "overall": 7}
    # fenced, upper-case keys; out of range, booleans and words are not scores
    assert judge.parse_grades('```json\n{"GRAMMAR": 11, "Creativity": true, "consistency": "seven", "plot": 3}\n```',
                              labels) == {"grammar": None, "creativity": None, "consistency": None, "plot": 3, "overall": None}
    # text answers in the hackathon's LABEL: score form
    assert judge.parse_grades("GRAMMAR: 6\nCREATIVITY: 5\nCONSISTENCY: 4\nPLOT: 3\nOVERALL: 5", labels) == \
        {"grammar": 6, "creativity": 5, "consistency": 4, "plot": 3, "overall": 5}


def test_protocol_file_in_the_organisers_yaml_layout(tmp_path, server_factory):
    server = server_factory()
    spec = tmp_path / "prompts.yaml"
    spec.write_text("system_prompt: |\n  Score the story. Give GRAMMAR, CREATIVITY, CONSISTENCY, PLOT, OVERALL.\n"
                    "user_prompt: \"Beginning and continuation {like this}: {story_start}***{completion}\"\n"
                    "followup_prompt: Scores only, please.\nmodels: [ignored]\n")
    proto = judge.load_protocol_file(spec)
    assert proto.followup_prompt == "Scores only, please." and proto.temperature == 0.1
    items = [it for it in make_items(30, 1) if planned("judge-a", it, proto)["kind"] == "plain"][:2]
    proc = run_judge(f"--completions={write_jsonl(tmp_path / 's.jsonl', items)}", f"--base_url={server.base_url}",
                     "--model=judge-a", f"--protocol_file={spec}", "--structured=off", f"--cache_dir={tmp_path / 'cache'}",
                     f"--out={tmp_path / 'j.json'}", *FAST)
    assert proc.returncode == 0, proc.stderr
    bodies = [r["body"] for r in requests_of(server)]
    assert {b["messages"][0]["content"] for b in bodies} == {
        "Score the story. Give GRAMMAR, CREATIVITY, CONSISTENCY, PLOT, OVERALL.\n"}
    assert {b["messages"][1]["content"] for b in bodies} == {
        f"Beginning and continuation {{like this}}: {it['prompt']}***{it['completion']}" for it in items}
    assert all(b["temperature"] == 0.1 for b in bodies)
    report = json.loads((tmp_path / "j.json").read_text())
    assert report["protocol"].startswith("tinystories-hackathon-file/") and report["n"] == 2
    # files that cannot work: one line each, before any request
    for text, needle in [("user_prompt: 'no story here'\n", "{completion}"), ("- a list\n", "YAML mapping"),
                         ("system_prompt: [1, 2]\n", "non-empty string"), ("system_prompt: 'a\n", "not valid YAML")]:
        spec.write_text(text)
        proc = run_judge(f"--completions={write_jsonl(tmp_path / 's.jsonl', items)}", f"--base_url={server.base_url}",
                         "--model=judge-a", f"--protocol_file={spec}", f"--cache_dir={tmp_path / 'cache'}", *FAST)
        assert_one_line_error(proc, "--protocol_file", needle)
    assert_one_line_error(run_judge(f"--completions={tmp_path / 's.jsonl'}", "--model=judge-a", "--protocol=paper",
                                    f"--protocol_file={spec}"), "--protocol=paper")


def test_generate_only_fills_a_submission_template_row_by_row(tmp_path, one_thread):
    ckpt = tmp_path / "tiny.pt"
    tiny_checkpoint(ckpt)
    a, b = "Tom had a red ball, and he", "The cat sat by the door, and"
    template = tmp_path / "evaluation_prompts.csv"
    order = [a, b, a, b, b, a, a, b]   # each prompt four times, interleaved
    template.write_text("id,prompt,completion\n" + "".join(f'{i},"{p}",\n' for i, p in enumerate(order)))
    common = [f"--ckpt={ckpt}", f"--prompts={template}", "--max_new_tokens=8", f"--cache_dir={tmp_path / 'cache'}",
              "--device=cpu"]
    proc = run_judge(*common, f"--generate_only={tmp_path / 'submission.csv'}", env_key=None)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "submission.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [str(i) for i in range(8)] and [r["prompt"] for r in rows] == order
    # the j-th row of a prompt holds its j-th sample: the completions a plain --ckpt run generates
    expected = judge.generate_completions(str(ckpt), [a, b], samples=[4, 4], max_new_tokens=8, temperature=1.0, top_k=None,
                                          top_p=None, seed=1337, batch_size=32, device="cpu")
    samples = {p: [it["completion"] for it in expected if it["prompt"] == p] for p in (a, b)}
    assert [r["completion"] for r in rows] == [samples[p][order[:i].count(p)] for i, p in enumerate(order)]
    assert len(set(samples[a])) > 1                                        # four samples, not one copied
    items = judge.load_completions(tmp_path / "submission.csv")           # and it judges like any submission
    assert [(it["prompt_id"], it["sample"]) for it in items][:3] == [(0, 0), (1, 0), (0, 1)]
    # --samples contradicts the rows
    assert_one_line_error(run_judge(*common, "--samples=2", f"--generate_only={tmp_path / 'x.csv'}", env_key=None),
                          "--samples does not apply")


def test_malformed_cache_and_completions_files_are_one_line_errors(tmp_path):
    items = make_items(1, 1)
    completions = write_jsonl(tmp_path / "ok.jsonl", items)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    # a cache line that is JSON, with the item's key, but not a grade: skipped and said (its grade is asked
    # again, here of a server that is not there), not a KeyError in the report
    settings = judge.grading_settings(judge.PAPER, "http://127.0.0.1:9/v1", 0.0, 600, "auto")
    key = judge.cache_key("judge-a", items[0]["prompt"], items[0]["completion"], settings)
    (cache_dir / "grades.jsonl").write_text(json.dumps({"key": key, "status": "ok", "scores": {"grammar": "ten"}}) + "\n")
    proc = run_judge(f"--completions={completions}", "--model=judge-a", "--base_url=http://127.0.0.1:9/v1",
                     f"--cache_dir={cache_dir}", f"--out={tmp_path / 'j.json'}", *FAST)
    assert proc.returncode == 2 and "skipped 1 line(s) that are not cache records (line 1)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: judge.py: cannot reach") and "Traceback" not in proc.stderr
    # a completions line nested beyond what a JSON parser recurses into
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 200_000 + "\n")
    proc = run_judge(f"--completions={deep}", "--model=judge-a", f"--cache_dir={tmp_path / 'c2'}", *FAST)
    assert_one_line_error(proc, "deep.jsonl", "line 1")


# -----------------------------------------------------------------------------
# nothing lost, nothing faked, nothing crashes (issue 23: each failed on the judge.py before it)

def test_free_text_grades_are_read_by_clause_not_by_the_first_digit():
    parse = judge.parse_grades
    assert parse("Grammar: 2 small mistakes, 8/10")["grammar"] == 8          # was 2
    assert parse("Plot: 6/10\nPlot twist: 1")["plot"] == 6                   # was 1
    assert parse("Grammar: -5")["grammar"] is None                           # was 5
    assert parse("Grammar: 1e309")["grammar"] is None                        # was 1
    assert parse("Grammar: 1_0")["grammar"] is None
    assert parse("Grammar: 8. Spelling mistakes: 2/10")["grammar"] == 8      # a later sentence is not the clause
    assert parse("Grammar - 5")["grammar"] == 5 and parse("Grammar score: 7")["grammar"] == 7
    labels = judge.HACKATHON.labels
    assert judge.parse_grades('{"grammar": "1_0", "creativity": "8/10", "consistency": " 7 ", "plot": "8/5", '
                              '"overall": "9.5"}', labels) == \
        {"grammar": None, "creativity": 8, "consistency": 7, "plot": None, "overall": 9.5}  # "1_0" was 10


def test_numbers_a_server_gives_are_bounded(tmp_path, server_factory):
    """Issue: a 400-digit score or usage.prompt_tokens was an OverflowError traceback; completion_tokens 1e308
    was counted."""
    huge = "9" * 400
    answer = '{"grammar": %s, "creativity": 7, "consistency": 7, "plot": 7}' % huge
    reply = tmp_path / "reply.json"
    reply.write_text('{"choices": [{"message": {"role": "assistant", "content": %s}}], '
                     '"usage": {"prompt_tokens": %s, "completion_tokens": 1e308}}' % (json.dumps(answer), huge))
    server = server_factory(f"--reply={reply}")
    items = make_items(1, 1)
    proc = run_judge(f"--completions={write_jsonl(tmp_path / 's.jsonl', items)}", f"--base_url={server.base_url}",
                     "--model=judge-a", "--structured=off", f"--cache_dir={tmp_path / 'cache'}",
                     f"--out={tmp_path / 'j.json'}", *FAST)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    report = json.loads((tmp_path / "j.json").read_text())
    assert report["unparsed"] == 1 and report["items"][0]["scores"] == "unparsed"   # 10^400 is no grade
    assert report["usage_this_run"]["prompt_tokens"] == report["usage_this_run"]["completion_tokens"] == 0
    assert report["usage_this_run"]["requests"] == 2                                # the answer and the follow-up
    # the one reader, as numbers come: never a bool, a float past the range, or a fraction of a token
    assert judge.bounded_number(10 ** 400, 0, 10) is None and judge.bounded_number(True, 0, 10) is None
    assert judge.bounded_number(float("inf"), 0, 10) is None and judge.bounded_number(7.5, 0, 10) == 7.5
    assert judge.token_count(12) == 12 and judge.token_count(12.0) == 12 and judge.token_count(12.5) == 0
    assert judge.token_count(1e308) == judge.token_count(-3) == judge.token_count("12") == 0


def test_grades_are_never_reused_across_settings_that_change_them(tmp_path, server_factory):
    """Issue: the cache key left out temperature, max_tokens, --structured and --base_url: a re-run with other
    values reused every grade while judge.json reported the new values."""
    server = server_factory()
    items = [it for it in make_items(8, 1) if planned("judge-a", it)["kind"] == "plain"][:2]
    args = [f"--completions={write_jsonl(tmp_path / 's.jsonl', items)}", "--model=judge-a",
            f"--cache_dir={tmp_path / 'cache'}", f"--out={tmp_path / 'j.json'}", *FAST]

    def requests_sent(*extra):
        """How many grades this run asked the server for (a grade may take a follow-up request too)."""
        before = sum(answered_grades(server).values())
        proc = run_judge(f"--base_url={server.base_url}", *args, *extra)
        assert proc.returncode == 0, proc.stderr
        return sum(answered_grades(server).values()) - before

    assert requests_sent() == 2
    assert requests_sent() == 0                                   # the same settings: every grade reused
    for changed in ("--judge_temperature=0.7", "--judge_max_tokens=99", "--structured=off", "--protocol=hackathon"):
        assert requests_sent(changed) == 2, changed               # another setting: asked again
    assert requests_sent(f"--base_url={server.base_url}/") == 0   # the same server written with a slash
    base = judge.grading_settings(judge.PAPER, "http://a/v1", 0.0, 600, "auto")
    keys = {judge.cache_key("judge-a", "p", "c", {**base, field: value}) for field, value in
            [("temperature", 0.0), ("temperature", 0.5), ("max_tokens", 10), ("structured", "off"),
             ("base_url", "http://b/v1"), ("user_prompt", "{story}!"), ("protocol", "x")]}
    assert len(keys) == 7
    assert judge.grading_settings(judge.PAPER, "http://a/v1/", 0, 600, "auto") == base


def test_a_story_holding_a_placeholder_is_sent_as_written():
    """Issue: a prompt containing {completion} got the completion substituted into it."""
    assert judge.HACKATHON.user_message("Tom wrote {completion} and {story_start}", "C") == \
        "Tom wrote {completion} and {story_start}***C"
    assert judge.PAPER.user_message("Tom wrote {completion}", "C").count("{completion}") == 1


def test_csv_with_a_bom_reads_and_duplicate_headers_are_refused(tmp_path, one_thread):
    """Issue: a UTF-8-BOM CSV was refused (found: \\ufeffprompt); a duplicated prompt header made --generate_only
    write the completion's row into both columns."""
    bom = tmp_path / "bom.csv"
    bom.write_bytes("prompt,completion\n\"Tom had a ball, and\",\" he ran.\"\n".encode("utf-8-sig"))
    assert judge.load_completions(bom)[0]["prompt"] == "Tom had a ball, and"
    twice = tmp_path / "twice.csv"
    twice.write_text("prompt,completion,prompt\nTom had a ball and,,The cat sat\n")
    with pytest.raises(ValueError, match="'prompt' more than once"):
        judge.load_completions(twice)
    ckpt = tmp_path / "tiny.pt"
    tiny_checkpoint(ckpt)
    proc = run_judge(f"--ckpt={ckpt}", f"--prompts={twice}", f"--generate_only={tmp_path / 'out.csv'}",
                     f"--cache_dir={tmp_path / 'cache'}", "--device=cpu", env_key=None)
    assert_one_line_error(proc, "twice.csv", "'prompt' more than once")
    assert not (tmp_path / "out.csv").exists()


def test_a_nul_filled_cache_line_is_skipped_and_the_rest_kept(tmp_path, server_factory):
    """Issue: one NUL-filled line (what a crash can leave on a file system) made the whole grades.jsonl unusable."""
    server = server_factory()
    items = [it for it in make_items(10, 1) if planned("judge-a", it)["kind"] == "plain"][:3]
    cache = tmp_path / "cache" / "grades.jsonl"
    args = [f"--completions={write_jsonl(tmp_path / 's.jsonl', items)}", "--model=judge-a", "--concurrency=1",
            f"--cache_dir={cache.parent}", f"--out={tmp_path / 'j.json'}", f"--base_url={server.base_url}", *FAST]
    assert run_judge(*args).returncode == 0
    lines = cache.read_bytes().split(b"\n")
    lines[1] = b"\0" * len(lines[1])
    cache.write_bytes(b"\n".join(lines))
    before = sum(answered_grades(server).values())
    proc = run_judge(*args)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 line(s) that are not cache records (line 2); kept the other 2 grades" in proc.stderr
    assert sum(answered_grades(server).values()) == before + 1                               # one re-asked
    assert json.loads((tmp_path / "j.json").read_text())["n"] == 3
