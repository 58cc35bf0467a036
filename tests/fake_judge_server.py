"""
A local OpenAI-compatible /v1/chat/completions server for judge.py's tests: a real HTTP server in its own
process, real sockets, answering with planned grades and planned faults.

What it answers to a request is a pure function of (model, the first user message), `plan()`, so a
test can compute the expected scores on its own. It answers in the protocol it is asked in: the paper's
`Grammar: n/10` lines and age group, or, when a system prompt asks for OVERALL, the hackathon's
`GRAMMAR: n` lines with OVERALL; and as a JSON object when the request's response_format is one the
server kind (--kind) takes. The faults, by kind of answer:
    rate_limited     first request: 429 with Retry-After
    server_error     first request: 500
    slow             first request: no answer for --slow_seconds (longer than the client's timeout), then a 500
    never_scores     an assessment without any score, also when asked again: unparseable
    scores_on_reask  first answer without scores, the re-ask gets them
    fancy            Markdown, 'n out of 10' forms, and an earlier wrong number that the last match overrides
    plain            the format the judge asked for
Models named missing* answer 404. Every request is logged as a JSON line to --log (event "request", with
its body), and so is what was answered.
--kind: what the server does with response_format:
    plain             ignores it and answers in text (as servers without constrained output do)
    openai            json_schema: a JSON answer; json_object with a schema: HTTP 400 naming response_format
    llama-cpp-python  json_schema: HTTP 500 naming response_format; json_object with a schema: a JSON answer
    text-only         any response_format: HTTP 400 naming response_format

    python tests/fake_judge_server.py --log=server.jsonl [--require_key=K] [--retry_after=1]
        [--slow_seconds=2] [--exit_after=N] [--hang_after=N] [--echo_key] [--redirect=CODE:URL] [--drip=SECONDS]
        [--content=list|number] [--kind=plain|openai|llama-cpp-python|text-only] [--reply=FILE]
It prints `port N` on its first stdout line once it listens (port 0 = any free port).
--exit_after=N: exit right after the answer that completes the N-th grade (the endpoint becomes unreachable).
--hang_after=N: after N completed grades, never answer again (so a test can kill the client mid-run).
--echo_key: a hostile server: every answer and every error body quotes the Authorization header it got.
--redirect=CODE:URL: answer every POST with that 3xx status and `Location: URL`. A GET (what a client that
    follows a 301/302/303 sends) is logged with whether it carried an Authorization header, and answered
    with a graded chat completion, as a server that wants to plant a grade would.
--content=list|number: the answer's `content` as a list of text parts (split in two), or as a number (no text).
--drip=SECONDS: send every answer one byte per SECONDS (a per-read timeout never trips; a deadline does).
--reply=FILE: a hostile server: answer every chat request with HTTP 200 and FILE's bytes as they are.
"""
import argparse
import hashlib
import http.server
import json
import os
import pathlib
import threading
import time

KINDS = ["rate_limited", "server_error", "slow", "never_scores", "scores_on_reask", "fancy", "plain", "plain"]
CATEGORIES = ("grammar", "creativity", "consistency", "plot")


def content_sha(model: str, content: str) -> str:
    return hashlib.sha256(f"{model}\0{content}".encode()).hexdigest()


def plan(model: str, content: str) -> dict:
    """{"kind", "scores" ({category: int} or None when it never gives scores), "age_group"}."""
    h = int(content_sha(model, content), 16)
    kind = KINDS[h % len(KINDS)]
    scores = {c: 1 + (h >> (8 * (i + 1))) % 10 for i, c in enumerate(CATEGORIES)}
    age = "ABCDEF"[(h >> 48) % 6]
    return {"kind": kind, "scores": None if kind == "never_scores" else scores, "age_group": age,
            "overall": 1 + (h >> 56) % 10}


def json_answer(p: dict, hackathon: bool, with_scores: bool) -> str:
    obj = {} if hackathon else {"assessment": assessment_only()}
    if with_scores:
        obj.update(p["scores"])
        obj.update({"overall": p["overall"]} if hackathon else {"age_group": p["age_group"]})
    return json.dumps(obj)


def assessment_only() -> str:
    return ("The student continues the story in simple sentences and finishes the sentence that was cut. "
            "The grammar is mostly fine and the story stays close to the beginning.")


def graded_answer(p: dict, hackathon: bool = False) -> str:
    s = p["scores"]
    if hackathon:
        if p["kind"] == "fancy":
            return (f"Here are my scores.\n**GRAMMAR**: {s['grammar']}/10\n**CREATIVITY:** {s['creativity']}\n"
                    f"CONSISTENCY - {s['consistency']}\nPLOT: {s['plot']} out of 10\nOVERALL: {p['overall']}")
        return "\n".join([*(f"{c.upper()}: {s[c]}" for c in CATEGORIES), f"OVERALL: {p['overall']}"])
    if p["kind"] == "fancy":
        return (f"Assessment: the grammar has 2 small slips, and the plot: 3 events happen.\n\n"
                f"**Grammar:** {s['grammar']} out of 10\n**Creativity**: {s['creativity']}/10\n"
                f"- Consistency (with the beginning): {s['consistency']} / 10\n- Plot = {s['plot']}/10\n"
                f"**Age group:** {p['age_group']} ({'the student seems young'})")
    return (f"{assessment_only()}\n\nGrammar: {s['grammar']}/10\nCreativity: {s['creativity']}/10\n"
            f"Consistency: {s['consistency']}/10\nPlot: {s['plot']}/10\nAge group: {p['age_group']}")


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.attempts = {}     # (model, content sha, is_reask) -> requests seen
        self.completed = 0     # grades whose final answer was sent
        self.answer_lock = threading.Lock()
        self.log = open(args.log, "a", buffering=1)

    def write_log(self, **entry):
        with self.lock:
            self.log.write(json.dumps({"time": time.time(), **entry}) + "\n")
            self.log.flush()
            os.fsync(self.log.fileno())


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the JSON log says what happened
        pass

    def reply(self, code: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a slow answer)
            pass

    def do_GET(self):
        state: State = self.server.state
        state.write_log(event="get", path=self.path, authorization=self.headers.get("Authorization") is not None)
        answer = ("Grammar: 10/10\nCreativity: 10/10\nConsistency: 10/10\nPlot: 10/10\nAge group: F"
                  + (f" {self.headers.get('Authorization')}" if state.args.echo_key else ""))
        self.reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})

    def drip(self, code: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.flush()
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(self.server.state.args.drip)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self):
        state: State = self.server.state
        args = state.args
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if args.redirect:
            code, url = args.redirect.split(":", 1)
            state.write_log(event="redirect", code=int(code), to=url)
            return self.reply(int(code), {"error": {"message": "moved"}}, {"Location": url})
        if args.drip:
            state.write_log(event="drip", model=body.get("model"))
            return self.drip(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Grammar: 5/10"}}]})
        if not self.path.endswith("/chat/completions"):
            return self.reply(404, {"error": {"message": f"no route {self.path}"}})
        if args.require_key and self.headers.get("Authorization") != f"Bearer {args.require_key}":
            state.write_log(event="401")
            echoed = f": {self.headers.get('Authorization')}" if args.echo_key else ""
            return self.reply(401, {"error": {"message": f"Incorrect API key provided{echoed}"}})
        if args.reply:  # a hostile server: this file's bytes, as they are, for every request
            state.write_log(event="raw", model=body.get("model"), body=body)
            data = pathlib.Path(args.reply).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        model, messages = body["model"], body["messages"]
        if model.startswith("missing"):
            return self.reply(404, {"error": {"message": f"The model `{model}` does not exist"}})
        users = [m["content"] for m in messages if m["role"] == "user"]
        content = users[0]
        sha, reask = content_sha(model, content), len(users) > 1
        form = (body.get("response_format") or {}).get("type")
        state.write_log(event="request", model=model, sha=sha, reask=reask, form=form, body=body)
        hackathon = messages[0]["role"] == "system" and "OVERALL" in messages[0]["content"]
        refused = {"openai": ("json_object", 400), "llama-cpp-python": ("json_schema", 500),
                   "text-only": (form, 400)}.get(args.kind)
        if form and refused and refused[0] == form:
            state.write_log(event="refused_format", model=model, sha=sha, form=form)
            message = (f"1 validation error: ('body', 'response_format', 'type') Input should be 'text' or "
                       f"'json_object', input: {form}" if args.kind == "llama-cpp-python" else
                       f"Invalid parameter: response_format of type {form} is not supported")
            return self.reply(refused[1], {"error": {"message": message}})
        as_json = form is not None and args.kind != "plain"
        p = plan(model, content)
        with state.lock:
            attempt = state.attempts.get((sha, reask), 0)
            state.attempts[(sha, reask)] = attempt + 1
        if not reask and attempt == 0 and p["kind"] == "rate_limited":
            state.write_log(event="429", model=model, sha=sha, reask=reask, retry_after=args.retry_after)
            return self.reply(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": str(args.retry_after)})
        if not reask and attempt == 0 and p["kind"] == "server_error":
            state.write_log(event="500", model=model, sha=sha, reask=reask)
            return self.reply(500, {"error": {"message": "internal error"}})
        if not reask and attempt == 0 and p["kind"] == "slow":
            state.write_log(event="slow", model=model, sha=sha, reask=reask)
            time.sleep(args.slow_seconds)
            return self.reply(500, {"error": {"message": "too late"}})
        with_scores = not (p["scores"] is None or (p["kind"] == "scores_on_reask" and not reask))
        if as_json:
            answer = json_answer(p, hackathon, with_scores)
        elif with_scores:
            answer = graded_answer(p, hackathon)
        else:
            answer = assessment_only()
        if args.echo_key:
            answer = f"(you sent {self.headers.get('Authorization')}) {answer}"
        usage = {"prompt_tokens": sum(len(m["content"]) for m in messages) // 4, "completion_tokens": len(answer) // 4}
        reply_content = {None: answer, "number": 7, "list": [{"type": "text", "text": answer[:len(answer) // 2]},
                                                      {"type": "text", "text": answer[len(answer) // 2:]}]}[args.content]
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        # the answer that ends a grade: the re-ask's for the kinds that need one, else the first
        final = reask if p["kind"] in ("never_scores", "scores_on_reask") else not reask
        limit = args.exit_after if args.exit_after is not None else args.hang_after
        # one answer at a time, so that "N grades completed" is exact when the server exits or hangs
        with state.answer_lock:
            if limit is None or state.completed < limit:
                state.completed += final
                state.write_log(event="answer", model=model, sha=sha, reask=reask, final=final, usage=usage,
                                json=as_json)
                self.reply(200, {"id": "chatcmpl-fake", "object": "chat.completion", "model": model,
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": reply_content},
                                              "finish_reason": "stop"}], "usage": usage})
                if args.exit_after is not None and state.completed >= args.exit_after:
                    os._exit(0)  # the answer is sent; from now on nothing listens on the port
                return
        state.write_log(event="refused", model=model, sha=sha, reask=reask)
        time.sleep(3600)  # --hang_after: never answer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", required=True)
    parser.add_argument("--require_key", default=None)
    parser.add_argument("--retry_after", type=int, default=1)
    parser.add_argument("--slow_seconds", type=float, default=2.0)
    parser.add_argument("--exit_after", type=int, default=None)
    parser.add_argument("--hang_after", type=int, default=None)
    parser.add_argument("--echo_key", action="store_true")
    parser.add_argument("--redirect", default=None)
    parser.add_argument("--drip", type=float, default=None)
    parser.add_argument("--reply", default=None, help="answer every request with this file's bytes")
    parser.add_argument("--content", choices=["list", "number"], default=None)
    parser.add_argument("--kind", choices=["plain", "openai", "llama-cpp-python", "text-only"], default="plain")
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.state = State(args)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
