"""The leaderboard page (leaderboard.py --html) in a real browser: Debian's chromium, headless, loads index.html
from file:// and the test reads the page as it is after its scripts ran (--dump-dom), then keeps a screenshot.
Skips where no chromium is installed (.ci/run installs it: apt-get install -y chromium)."""
import html.parser
import json
import os
import pathlib
import shutil
import subprocess

import pytest

import leaderboard as lb
from helpers import ROOT

FIXTURES = ROOT / "tests" / "fixtures"
# a record description is user input: it must reach the page as text, never as markup or script
HOSTILE = ("</script><script>document.body.setAttribute('data-pwned','script')</script>"
           "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\"> & <!-- \u2028")
HOSTILE_RECORD = "2025-01-10_baseline"


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium: apt-get install -y chromium")


def browser(chromium, profile, *args):
    """chromium headless on a fresh profile; root (CI containers) needs --no-sandbox."""
    sandbox = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    cmd = [chromium, "--headless", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}", *sandbox, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class Page(html.parser.HTMLParser):
    """What the test reads from the DOM: elements with their attributes, and the text of the record panel."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements, self.stack, self.panel_text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        if tag not in ("img", "br", "meta", "input", "circle", "rect", "line", "polyline", "path"):
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if any(tag == "div" and attrs.get("id") == "record" for tag, attrs in self.stack) and \
                any(tag == "pre" for tag, _ in self.stack):
            self.panel_text.append(data)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The static site of the fixture records and Marin's runs.json, one description hostile in each."""
    tmp = tmp_path_factory.mktemp("web")
    shutil.copytree(FIXTURES / "leaderboard" / "records", tmp / "records")
    results = tmp / "records" / "tinystories" / HOSTILE_RECORD / "results.json"
    record = json.loads(results.read_text())
    record["description"] = HOSTILE
    results.write_text(json.dumps(record))
    runs = json.loads((FIXTURES / "marin" / "runs.json").read_text())
    runs[0]["description"] = HOSTILE
    (tmp / "runs.json").write_text(json.dumps(runs))
    (tmp / "README.md").write_text(f"x\n{lb.START_MARKER}\n{lb.END_MARKER}\n")
    assert lb.main([f"--records={tmp / 'records'}", f"--readme={tmp / 'README.md'}", f"--marin_runs={tmp / 'runs.json'}",
                    f"--html={tmp / 'site'}", f"--json={tmp / 'site.json'}"]) == 0
    return tmp


def test_page_in_chromium_shows_every_record_draws_its_charts_and_keeps_a_description_inert(site, tmp_path, capsys):
    chromium = find_chromium()
    index = site / "site" / "index.html"
    assert "</script><script>document.body" not in index.read_text()  # the embedded data cannot end its script
    url = index.as_uri() + "#record=" + HOSTILE_RECORD
    page = Page()
    page.feed(browser(chromium, tmp_path / "profile", "--dump-dom", url))
    body = next(attrs for tag, attrs in page.elements if tag == "body")
    assert "data-pwned" not in body  # neither the script nor the image's handler ran
    assert int(body["data-charts-drawn"]) >= 3  # All runs per table, Scaling for Marin's groups
    # every record is on the page as a point of a chart the script drew, the Marin runs among them
    data = json.loads((site / "site.json").read_text())
    names = {r["run"] for t in data["tables"] for r in t["rows"]}
    drawn = {attrs["data-run"] for tag, attrs in page.elements if tag == "circle" and "data-run" in attrs}
    assert names <= drawn and {"adamw_llama_scaling/1_2b", HOSTILE_RECORD, "2025-01-12_muon_3seeds"} <= names
    assert len(names) == 118 + 7
    classes = [attrs.get("class") for tag, attrs in page.elements if tag == "polyline"]
    assert "frontier" in classes and "fit" in classes and "fit-converged" in classes
    fitted = [g for t in data["tables"] for g in t["scaling"][data["x"]] if g["a"] is not None]
    curves = [attrs["data-group"] for tag, attrs in page.elements if tag == "polyline" and attrs.get("class") == "fit"]
    assert sorted(curves) == sorted(g["group"] for g in fitted) and len(curves) == 25  # one fitted curve per group
    # the record panel opened by the link holds the hostile description as text; no element came from it
    panel = next(attrs for tag, attrs in page.elements if attrs.get("id") == "record")
    assert panel["data-open"] == HOSTILE_RECORD
    assert json.loads("".join(page.panel_text))["description"] == HOSTILE
    assert [attrs["src"] for tag, attrs in page.elements if tag == "img"] == ["frontier.svg"]
    assert sum(1 for tag, _ in page.elements if tag == "script") == 2  # the page's data and its script, no third
    # a screenshot of the page with the record open, kept for the reader of the test output
    shot = pathlib.Path(os.environ.get("LEADERBOARD_SCREENSHOT", tmp_path / "leaderboard.png"))
    browser(chromium, tmp_path / "profile2", "--window-size=1400,2400", f"--screenshot={shot}", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    with capsys.disabled():
        print(f"\nscreenshot: {shot}")
