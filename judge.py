"""
The TinyStories LLM-as-a-judge: story beginnings, completions, grades from a chat model.

Two grading protocols (--protocol). `paper` (the default) is Eldan & Li, "TinyStories" (arXiv:2305.07759):
a model completes story beginnings that are cut mid-sentence; a judge sees the beginning and the
completion separated by `***`, is told a student wrote the part after it, writes a short assessment, then
grades grammar, creativity, consistency and plot out of 10 and guesses the student's age group (A: 3 or
under ... F: 13-16). `hackathon` is the scoring the TinyStories Hackathon's organisers ran: a system
prompt asking GRAMMAR, CREATIVITY, CONSISTENCY, PLOT and OVERALL from 1 to 10 as `LABEL: score` lines, the
story as `{story_start}***{completion}`, temperature 0.1, a short answer; --protocol_file FILE.yaml takes
its prompts from a YAML file in the organisers' layout (system_prompt, user_prompt, followup_prompt).
Either way one follow-up is sent when a score is missing, and the record's `overall` is the mean of the
four categories (the hackathon's own OVERALL is reported beside it as `overall_judge`).

Any OpenAI-compatible /v1/chat/completions endpoint can judge (OpenAI, vLLM, llama.cpp server, Ollama,
SGLang); several --model flags mean several judges. --structured=auto (the default) asks for the grades
as a JSON object, which small local models need: response_format json_schema, then json_object with a
schema (llama-cpp-python's server), then free text, as the server accepts; judge.json gives the parse
rate per judge.

Judge a checkpoint (generates --samples completions per prompt, then grades them):
    OPENAI_API_KEY=sk-... python judge.py --ckpt=ckpt.pt --model=gpt-4o --base_url=https://api.openai.com/v1
Judge a submitted file of completions (CSV or JSONL with `prompt` and `completion`), no model needed:
    python judge.py --completions=submission.csv --model=qwen2.5:14b --base_url=http://localhost:11434/v1 --api_key_env=
Write the hackathon's submission file: every row of a `prompt,completion` CSV gets its completion (a
prompt on four rows gets four samples), rows kept in order; no judge is called:
    python judge.py --ckpt=ckpt.pt --prompts=evaluation_prompts.csv --generate_only=submission.csv
Write the summary into a record's results.json (and the full report to DIR/judge.json):
    python judge.py --ckpt=ckpt.pt --model=gpt-4o --record=records/tinystories/2025-01-01_me

Re-runs are free: generated completions are saved in --cache_dir keyed by the generation arguments,
and every judge answer is appended (fsync'd) to --cache_dir/grades.jsonl keyed by the judge model, the
story and every setting that changes a grade (the protocol's wording, --base_url, the judge's temperature
and max tokens, --structured), so a re-run, or a run resumed after a crash or Ctrl-C, sends only the
requests not yet answered. The API key is read from the environment variable named by --api_key_env; it is sent only
to --base_url (redirects are refused), and never printed or written (a server that echoes it is redacted).
"""
import argparse
import collections
import csv
import dataclasses
import email.utils
import hashlib
import http.client
import io
import json
import math
import os
import pathlib
import queue
import re
import signal
import socket
import statistics
import sys
import threading
import time
import urllib.parse
import urllib.request  # the proxy settings only: requests go through http.client

from tqdm import tqdm

import common
import leaderboard  # the record format: read_record, update_record (no torch at import)
import prepare  # a checkpoint's tokenizer (numpy only: no torch at startup)

# -----------------------------------------------------------------------------
# The default prompt set: story beginnings written for this project, in words a 3-4 year old knows,
# each cut mid-sentence so the judge can check that the completion finishes the sentence.
# They mix dialogue, twists, a moral and sad endings, as the paper's set does.

DEFAULT_PROMPTS = [
    "Once upon a time, there was a little red hen who lived on a farm. Every morning she looked for seeds in the yard. One day she found a big shiny egg that was not hers, and she",
    "Tom had a blue ball that he loved very much. He took it to the park every day. One windy day, he kicked the ball very high, and the wind",
    "Mia and her dad were making a cake for Mom. Mia put in the flour and the eggs. Then Dad said, \"Now we need the sugar.\" Mia looked in the box, but",
    "\"Can I have a cookie?\" asked Ben. \"Not before dinner,\" said Mom. Ben was sad. When Mom went out to the garden, Ben saw the cookie jar on the table and",
    "There was a small fish named Bubbles who lived in a pond. Bubbles wanted to see what was on the other side of the big rock. His mom told him to stay close, but",
    "Lily found a little bird on the ground under a tree. Its wing was hurt and it could not fly. Lily picked it up very gently and said, \"Don't be scared, I will",
    "Sam had a new red bike. His friend Leo did not have a bike. Leo watched Sam ride up and down the street. Sam stopped and said, \"Do you want to",
    "Once upon a time, a big bear lived in a cave. He was always grumpy because he could not sleep. One night, he heard a tiny voice singing outside. The bear got up and",
    "Zoe wanted to help her grandma in the garden. Grandma gave her a small pot and some seeds. \"If you give them water every day,\" said Grandma, \"they will",
    "The sun was hot and the ice cream truck came down the road. Max ran to get his money, but his piggy bank was empty. He remembered that yesterday he had",
    "Anna had a toy rabbit named Mr. Hop. She took him everywhere. One day at the store, she looked down and Mr. Hop was gone. Anna started to cry, and then",
    "A little cat named Socks liked to sit by the window. Every day she watched a bird on the fence. One day the window was open, and Socks",
    "Once upon a time, there was a boy who did not like to share his toys. When his friends came to play, he said, \"These are all mine!\" His friends went home, and the boy",
    "It was raining and Nora could not go outside. She was bored. Her mom gave her some paper and crayons and said, \"Why don't you draw",
    "Finn and his sister Ruby built a big tower with blocks. It was taller than Finn! Then the dog ran into the room, wagging his tail, and",
    "An old tree stood in the middle of the field. Many birds lived in its branches. One day, a man came with a big saw. The birds were scared, so they",
    "Jack wanted to be the fastest runner in his class. Every day he ran around the yard. On the day of the big race, he tripped on a rock and",
    "Once there was a little duck who could not swim. The other ducks played in the water all day. The little duck sat on the grass and",
    "\"Look, Mom, a puppy!\" said Emma. A small brown puppy was sitting all alone by the gate. It had no collar. Emma asked, \"Can we",
    "Ben's tooth was loose. It wiggled when he ate his apple. That night, he put the tooth under his pillow and tried to stay awake to see",
    "The little train went up the hill every day with toys for the children. One cold morning, the snow was very deep, and the little train",
    "Lucy liked to sing, but she was shy. When her teacher asked who wanted to sing for the class, Lucy's hands shook. She stood up slowly and",
    "A frog and a turtle lived by the same pond. The frog was fast and the turtle was slow. One day the frog said, \"Let's see who can get to the big rock first,\" and",
    "Mom gave Sam a coin to buy bread. On the way to the shop, Sam saw a man with a box of small, soft kittens. Sam held the coin tight and",
    "Kim had a red balloon from the fair. She held the string very tight. But when she waved to her friend, the string slipped out of her hand, and the balloon",
    "Grandpa had an old box on the top shelf. \"Don't open it yet,\" he said with a smile. \"It is for your birthday.\" But the next day, when Grandpa was asleep, Tim",
    "The snowman in the yard had a carrot nose and a big hat. Every night, when the children were in bed, the snowman",
    "Once upon a time, there was a girl named Rosa who was afraid of the dark. Every night she asked her dad to leave the light on. One night the light went out, and",
    "Leo and his dog Spot went for a walk in the woods. They walked and walked. When Leo looked around, he did not know the way home. Spot sniffed the ground and",
    "\"I can do it by myself!\" said Lily. She wanted to tie her shoes. She tried once, and the laces fell apart. She tried again, but",
    "A tiny ant found a big crumb of bread. It was too heavy for her to carry. She looked at the crumb and then at her home far away. Then she had an idea. She went to find",
    "On the first day of school, Max did not know anyone. He sat alone at lunch with his sandwich. Then a girl with a yellow hat came over and said,",
    "The farmer had a cow named Daisy who gave the best milk. One morning, Daisy was not in the barn. The gate was open, and on the ground there were",
    "Mia broke her mom's favorite cup. She hid the pieces under the bed. When Mom asked, \"Have you seen my blue cup?\" Mia felt a knot in her tummy and",
    "Once upon a time, there was a star that lived high in the sky. The star was sad because all the other stars were far away. One night it saw a little girl looking up and",
    "Sara and her brother wanted the same toy car. They both pulled on it. \"It's mine!\" said Sara. \"No, it's mine!\" said her brother. Then the car",
    "Every day, a kind old man fed the ducks at the park. The ducks loved him. One day, the old man did not come. The next day he did not come either, so the ducks",
    "Tom's kite was stuck in a tall tree. He pulled the string, but the kite did not move. A big bird landed next to the kite and",
    "Ella wanted a pet more than anything. Her mom said, \"A pet is a lot of work.\" Ella said she would feed it and walk it every day. So on Saturday, they went to",
    "The little boat sailed on the lake. The sky was blue and the water was calm. Then, far away, Dad saw big gray clouds, and he said,",
    "Once upon a time, a bunny named Pip lost her favorite carrot. She asked the owl, \"Have you seen my carrot?\" The owl blinked and said, \"Yes, I saw",
    "Ben always said he was not scared of anything. At the fair, his friends wanted to go into the dark, spooky house. Ben looked at the door and",
    "Grandma's dog, Buster, was very old. He could not run anymore, and he slept most of the day. One morning, Grandma sat down next to Amy and said softly,",
    "Jake found a shiny key in the sand at the beach. It was old and gold. He looked around and saw a little wooden door in the side of a big rock, and",
    "Two birds built a nest in the tree by Nina's window. Soon there were three small eggs in it. Nina watched them every day, until one morning she heard",
    "The king wanted the best cake in the land. All the bakers came with big, fancy cakes. Then a little girl came with a small, plain cake, and the king",
    "Owen did not want to eat his green beans. He gave them to the dog under the table. But the dog did not like green beans either, so it",
    "Once there was a cloud who wanted to make the flowers happy. The cloud rained on the garden, but it rained too much, and soon",
    "Ruby and her mom planted a little apple tree. Ruby asked, \"When will it have apples?\" Mom laughed and said, \"Not for a long time. You will have to",
    "A little lamb named Fluff walked away from the farm to eat the sweet grass on the hill. When the sun went down, Fluff heard a sound in the bushes and",
    "Dan and Ava were playing hide and seek. Ava hid in a big box in the garage. She waited and waited, but Dan did not come. Then she heard the car start and",
    "The old toy robot sat at the bottom of the toy box. Nobody played with him anymore. One day, a little boy who had no toys came to visit, and he",
]

DEFAULT_SAMPLES = 4  # completions per prompt

# The TinyStories dataset's own evaluation prompts (44 beginnings, a YAML list of strings).
TINYSTORIES_PROMPTS_REPO = "roneneldan/TinyStories"
TINYSTORIES_PROMPTS_FILE = "Evaluation prompts.yaml"

# -----------------------------------------------------------------------------
# The grading protocols. `paper`: the paper's wording, in one user message; its last paragraph fixes an
# answer format so parsing rarely needs the follow-up. `hackathon`: the scoring the TinyStories Hackathon's
# organisers ran (a system prompt asking GRAMMAR, CREATIVITY, CONSISTENCY, PLOT and OVERALL from 1 to 10 as
# `LABEL: score` lines, the story as the user message `{story_start}***{completion}`, temperature 0.1, a
# short answer, one follow-up when a score is missing), worded here in our own words; --protocol_file
# loads the organisers' exact wording from their YAML layout. A protocol's id is part of every cache key:
# change a wording, bump its version.

CATEGORIES = ("grammar", "creativity", "consistency", "plot")
AGE_GROUPS = {"A": "3 or under", "B": "4-5", "C": "6-7", "D": "8-9", "E": "10-12", "F": "13-16"}

GRADING_TEMPLATE = """In the following exercise, the student is given a beginning of a story. The student needs to complete it into a full story. The exercise tests the student's language abilities and creativity. The symbol *** marks the separator between the prescribed beginning and the student's completion:

{story}

Please provide your general assessment about the part written by the student (the one after the *** symbol). Is it grammatically correct? Is it consistent with the beginning of the story? Pay special attention to whether the student manages to complete the sentence which is split in the middle by the separator ***.

Now, grade the student's completion in terms of grammar, creativity, consistency with the story's beginning and whether the plot makes sense. Moreover, please provide your best guess of what the age of the student might be, as reflected from the completion. Choose from possible age groups: A: 3 or under. B: 4-5. C: 6-7. D: 8-9. E: 10-12. F: 13-16.

Write the assessment first, in a few sentences. Then end your answer with exactly these five lines, X being a number from 1 to 10 and L a letter from A to F:
Grammar: X/10
Creativity: X/10
Consistency: X/10
Plot: X/10
Age group: L"""

REASK = """Thank you. Please now give only your grades, in exactly this format, X being a number from 1 to 10 and L a letter from A to F:
Grammar: X/10
Creativity: X/10
Consistency: X/10
Plot: X/10
Age group: L"""

HACKATHON_SYSTEM = """You grade short stories for young children. Each story you are shown begins with a given opening; the text after the *** marker is a student's continuation of it. Judge only the continuation, as writing meant for children of 3 to 4 years, on five scales, each a whole number from 1 (very poor) to 10 (excellent):
GRAMMAR: correct spelling, grammar and sentence structure.
CREATIVITY: fresh, imaginative ideas and word choice.
CONSISTENCY: agreement with the opening (characters, setting, events), including finishing the sentence the opening leaves unfinished.
PLOT: a clear and sensible sequence of events that reaches an ending.
OVERALL: your judgement of the continuation as a whole.
Reply with these five lines only, each a label, a colon and the score:
GRAMMAR: score
CREATIVITY: score
CONSISTENCY: score
PLOT: score
OVERALL: score"""

HACKATHON_USER = "{story_start}***{completion}"

HACKATHON_FOLLOWUP = """One or more scores are missing. Reply with only the five lines GRAMMAR, CREATIVITY, CONSISTENCY, PLOT and OVERALL, each followed by a colon and a whole number from 1 to 10."""


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str                  # paper | hackathon
    id: str                    # part of every cache key
    system_prompt: str | None
    user_prompt: str           # paper: {story}; hackathon: {story_start} and {completion}
    followup_prompt: str
    temperature: float         # the judge's, unless --judge_temperature says otherwise
    max_tokens: int            # the judge's answer cap, unless --judge_max_tokens says otherwise

    @property
    def labels(self) -> tuple[str, ...]:
        """What the judge is asked for: the four categories, then the paper's age group or the hackathon's OVERALL."""
        return (*CATEGORIES, "age_group") if self.name == "paper" else (*CATEGORIES, "overall")

    def user_message(self, prompt: str, completion: str) -> str:
        if self.name == "paper":
            return self.user_prompt.format(story=f"{prompt.rstrip()} *** {completion.strip()}")
        # one pass over the template, not format (organisers' prompts may hold other braces) nor two replaces
        # (a story beginning holding "{completion}" would get the completion put into it)
        parts = {"{story_start}": prompt, "{completion}": completion}
        return re.sub(r"\{story_start\}|\{completion\}", lambda m: parts[m.group(0)], self.user_prompt)

    def messages(self, prompt: str, completion: str) -> list[dict]:
        """The chat messages that ask for one grade."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": self.user_message(prompt, completion)}]

    def json_schema(self) -> dict:
        """The grades as a JSON object, for servers that constrain their output (--structured). The paper's
        assessment comes first, so the judge still writes it before it grades."""
        score = {"type": "integer", "enum": list(range(1, 11))}
        properties = {"assessment": {"type": "string", "maxLength": 600}} if self.name == "paper" else {}
        properties.update({c: score for c in self.labels if c != "age_group"})
        if self.name == "paper":
            properties["age_group"] = {"type": "string", "enum": list(AGE_GROUPS)}
        return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}

    def json_note(self) -> str:
        """Said to the judge (as a system message) with a structured request, whose answer is JSON."""
        if self.name == "paper":
            return ("Write your answer as a JSON object with these keys in this order: assessment (your assessment, "
                    "a few sentences), grammar, creativity, consistency, plot (each a whole number from 1 to 10) "
                    "and age_group (one letter from A to F).")
        return ("Write your answer as a JSON object with the keys grammar, creativity, consistency, plot and "
                "overall, each a whole number from 1 to 10.")


PAPER = Protocol("paper", "tinystories-paper/1", None, GRADING_TEMPLATE, REASK, temperature=0.0, max_tokens=600)
HACKATHON = Protocol("hackathon", "tinystories-hackathon/1", HACKATHON_SYSTEM, HACKATHON_USER, HACKATHON_FOLLOWUP,
                     temperature=0.1, max_tokens=128)
PROTOCOLS = {"paper": PAPER, "hackathon": HACKATHON}


def load_protocol_file(path: pathlib.Path) -> Protocol:
    """The hackathon's scoring with prompts from a YAML file in the organisers' layout: `system_prompt`,
    `user_prompt` (the story as {story_start} and {completion}), `followup_prompt`; a missing one keeps ours.
    Its id names a hash of the prompts, so other wording never reuses these grades."""
    import yaml  # PyYAML comes with datasets / huggingface_hub
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--protocol_file={path}: no such file")
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"--protocol_file={path}: not valid YAML ({str(e).splitlines()[0]})")
    keys = ("system_prompt", "user_prompt", "followup_prompt")
    if not isinstance(data, dict) or not any(k in data for k in keys):
        raise ValueError(f"--protocol_file={path}: expected a YAML mapping with {', '.join(keys)}")
    prompts = {k: data.get(k, getattr(HACKATHON, k)) for k in keys}
    for k, v in prompts.items():
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"--protocol_file={path}: {k} must be a non-empty string")
    if "{completion}" not in prompts["user_prompt"]:
        raise ValueError(f"--protocol_file={path}: user_prompt must hold {{completion}} (and {{story_start}}), where "
                         f"the story goes; the judge would never see it")
    digest = hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()[:16]
    return dataclasses.replace(HACKATHON, id=f"tinystories-hackathon-file/{digest}", **prompts)


# -----------------------------------------------------------------------------
# Parsing the judge's answer. A JSON object (a structured answer) is read by its keys; any other text by
# labels: a label, a separator or an '/10', a number; the last match wins, because the assessment may
# mention a category before the grades at the end.

LABEL_RE = re.compile(r"\b(grammar|creativity|consistency|plot|overall)\b", re.IGNORECASE)
# After a label: the gap (no digits), a number (never the start of a longer one: 1e309, 1_0, 8.5.1), an
# optional scale. A gap of words ('Plot twist: 1') is prose unless the number carries its '/10'.
SCORE_AFTER_LABEL = re.compile(r"(?P<gap>[^0-9\n]{0,40}?)(?<![\d.])(?P<number>\d+(?:\.\d+)?)(?![\d_]|[.,]\d|[eE][+-]?\d)"
                               r"(?:\s*(?:/|out of)\s*(?P<scale>\d+(?:\.\d+)?)(?![\d.]))?", re.IGNORECASE)
PLAIN_GAP = re.compile(r"[^\w\n]*(?:(?:score|rating|grade)\b[^\w\n]*)?", re.IGNORECASE)
# 'Grammar: 2 small mistakes, 8/10': a score out of 10 later in the label's clause is its grade
LATER_OUT_OF_10 = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(?:/|out of)\s*10(?![\d.])", re.IGNORECASE)
CLAUSE_END = re.compile(r"[.;!?](?:\s|$)")
AGE_LETTER_RE = re.compile(r"\b(?i:age)\b(?:\s*(?i:group))?[^\n]{0,30}?\b([A-F])\b")
AGE_RANGE_RE = re.compile(r"\b(?i:age)\b[^\n]{0,30}?(3 or under|4-5|6-7|8-9|10-12|13-16)")
SCORE_TEXT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*")  # a score given as a string: "8", "8/10"


def bounded_number(value, low, high, whole: bool = False):
    """A number a server or a file gave (a JSON int or float, never a bool) when it lies in [low, high]
    (and is whole, with whole=True); else None. A number is what a record's figures may be (leaderboard.is_number:
    finite, an integer within int64), so a 400-digit integer is no number rather than an OverflowError, and
    1e308 or inf is never a count. The one reader of such numbers in judge.py."""
    if not leaderboard.is_number(value) or not low <= value <= high or (whole and value != int(value)):
        return None
    return value


def score_value(value):
    """A grade: a number from 0 to 10, or a string holding one ("8", "8/10"); an int when whole."""
    if isinstance(value, str):
        m = SCORE_TEXT.fullmatch(value)
        value = float(m.group(1)) if m else None
    value = bounded_number(value, 0, 10)
    return None if value is None else int(value) if value == int(value) else float(value)


def text_score(text: str, label_end: int, segment_end: int) -> float | None:
    """The grade written after a label (text[label_end:segment_end], up to the next label or line end), or
    None. A number counts only after a separator (':', '=', '-') or when written as 'n/10' / 'n out of 10';
    '/' before it means it is a scale ('Grammar: X/10', 'N/A/10'); a minus sign makes it no grade."""
    segment = text[label_end:segment_end]
    m = SCORE_AFTER_LABEL.match(segment)
    if m is None:
        return None
    gap, number, scale = m.group("gap"), float(m.group("number")), m.group("scale")
    if "/" in gap or (scale is not None and float(scale) != 10):
        return None
    if re.search(r"[\s:=*]-$", gap):  # 'Grammar: -5' is a negative number, not 5
        return None
    if scale is None:
        if not PLAIN_GAP.fullmatch(gap) or not any(sep in gap for sep in ":=-"):
            return None
        rest = segment[m.end():]
        end = CLAUSE_END.search(rest)
        later = LATER_OUT_OF_10.search(rest[:end.start() if end else len(rest)])
        if later:
            number = float(later.group(1))
    return score_value(number)


def parse_grades(text: str, labels: tuple[str, ...] = (*CATEGORIES, "age_group")) -> dict:
    """{label: float|None, ..., "age_group": "A".."F"|None} from one judge answer, for the labels asked
    (the paper's four categories and age group by default; the hackathon's with "overall").
    A JSON object is read by its keys; other text by labels (text_score), the last grade of a label wins,
    because the assessment may mention a category before the grades at the end. 'the grammar has 2
    mistakes' is not a grade, nor the '10' of a '/10', nor 'n/5'; values outside 0..10 are ignored."""
    text = text if isinstance(text, str) else ""
    grades = dict.fromkeys(labels)
    from_json = json_grades(text, labels)
    if from_json is not None:
        return from_json
    found = list(LABEL_RE.finditer(text))
    for i, m in enumerate(found):
        label = m.group(1).lower()
        if label not in grades:
            continue
        line_end = text.find("\n", m.end())
        segment_end = min(found[i + 1].start() if i + 1 < len(found) else len(text),
                          line_end if line_end >= 0 else len(text))
        score = text_score(text, m.end(), segment_end)
        if score is not None:
            grades[label] = score
    if "age_group" in grades:
        for m in AGE_LETTER_RE.finditer(text):
            grades["age_group"] = m.group(1)
        if grades["age_group"] is None:
            by_range = {v: k for k, v in AGE_GROUPS.items()}
            for m in AGE_RANGE_RE.finditer(text):
                grades["age_group"] = by_range[m.group(1)]
    return grades


def json_grades(text: str, labels: tuple[str, ...]) -> dict | None:
    """The grades of an answer that is a JSON object (fenced in ``` or not), read by key; None when the
    answer is not one. A score is score_value's: a number from 0 to 10 or a string holding one ("8/10")."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    if not (body.startswith("{") and body.endswith("}")):
        return None
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    by_key = {str(k).lower().replace(" ", "_"): v for k, v in obj.items()}
    grades = dict.fromkeys(labels)
    for label in labels:
        value = by_key.get(label)
        if label == "age_group":
            grades[label] = value.strip()[:1].upper() if isinstance(value, str) and value.strip()[:1].upper() in AGE_GROUPS else None
        else:
            grades[label] = score_value(value)
    return grades


def scores_complete(grades: dict) -> bool:
    return all(grades[c] is not None for c in CATEGORIES)


def grading_messages(prompt: str, completion: str, protocol: Protocol = PAPER) -> list[dict]:
    return protocol.messages(prompt, completion)


# -----------------------------------------------------------------------------
# The chat-completions client: one HTTP connection per request (http.client, standard library), retries
# with exponential backoff on 429, 5xx, timeouts and dropped connections, honouring Retry-After up to
# MAX_WAIT. Bounded: --timeout is the deadline of one whole answer (connect, wait, read), enforced by a
# timer that closes the socket, so a server that drips a byte a second is cut off like a silent one.
# Never follows a redirect (the key would go wherever the server points): a 3xx is an error that names
# the target. Connection refused, unknown hosts and other 4xx answers stop the run at once with one line.

MAX_WAIT = 60.0        # seconds: the longest wait before a retry, whatever Retry-After or the backoff say
MAX_REPLY_BYTES = 16 << 20


class TransientError(Exception):
    def __init__(self, what: str, retry_after: float | None = None):
        super().__init__(what)
        self.retry_after = retry_after


class Stopped(Exception):
    """The run is stopping (Ctrl-C, or another worker's fatal error): send nothing more."""


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_delay(attempt: int, retry_after: float | None, backoff: float) -> float:
    """Seconds to wait before retry number attempt+1: what the server asked for, else backoff * 2^attempt;
    never more than MAX_WAIT (a `Retry-After: 86400` waits a minute, then the retry count decides)."""
    wanted = retry_after if retry_after is not None else backoff * 2.0 ** min(attempt, 60)
    return min(wanted, MAX_WAIT)


def message_text(message) -> str:
    """The text of a chat message: a string, or the text parts of a list of content parts joined; anything
    else (null, a number, an object) is no text, so the answer counts as unparsed."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part if isinstance(part, str) else part["text"] if isinstance(part, dict) and
                       isinstance(part.get("text"), str) else "" for part in content)
    return ""


MAX_TOKENS_REPORTED = 10 ** 9  # tokens one request can have used: more is a server's error, counted as unknown


def token_count(value) -> int:
    """A server's usage figure: a whole number of tokens, 0 when missing or impossible."""
    return int(bounded_number(value, 0, MAX_TOKENS_REPORTED, whole=True) or 0)


def close_socket(conn: http.client.HTTPConnection) -> None:
    """Unblock whichever thread reads from conn (its read fails at once). socket.socket.shutdown on the
    raw descriptor, so a TLS socket is not torn down under its reader."""
    sock = conn.sock
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


class ChatClient:
    def __init__(self, base_url: str, api_key: str | None, timeout: float, retries: int, backoff: float,
                 temperature: float, max_tokens: int, structured: str = "auto"):
        parts = urllib.parse.urlsplit(base_url.rstrip("/") + "/chat/completions")
        self.url = parts.geturl()  # parse_args refused a URL with credentials in it
        self.base_url = base_url
        self.https, self.host, self.port = parts.scheme == "https", parts.hostname, parts.port
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.api_key = api_key
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.temperature, self.max_tokens = temperature, max_tokens
        self.structured = structured
        # the response_format forms to try, in order; per judge model, the one that works is remembered
        self.forms = {"auto": ("json_schema", "json_object", "off"), "off": ("off",)}.get(structured, (structured,))
        self.forms_index = {}
        self.stop = threading.Event()  # set on Ctrl-C or a fatal error: nothing more is sent
        self.open = set()              # connections in flight, closed by abort()
        self.lock = threading.Lock()      # guards open and forms_index
        self.proxy = None  # an HTTP(S)_PROXY that applies to --base_url, as urllib would use it
        if not urllib.request.proxy_bypass(self.host):
            proxy = urllib.request.getproxies().get("https" if self.https else "http")
            self.proxy = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}") if proxy else None

    def redact(self, text: str) -> str:
        """Servers may echo the key (in an answer or an error body); it never reaches our output or files."""
        return text.replace(self.api_key, "***") if self.api_key else text

    def abort(self) -> None:
        """Stop now: no new request, and every request in flight fails at once."""
        self.stop.set()
        with self.lock:
            conns = list(self.open)
        for conn in conns:
            close_socket(conn)

    def post_once(self, body: dict) -> tuple[int, bytes, float | None, str | None]:
        """One POST: (status, body, Retry-After, Location). TransientError for a timeout or a dropped
        connection, Stopped when abort() cut it, ValueError when the server cannot be reached at all."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        factory = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        path = self.path
        if self.proxy is None:
            conn = factory(self.host, self.port, timeout=self.timeout)
        elif self.https:  # a CONNECT tunnel through the proxy; TLS to the server itself
            conn = factory(self.proxy.hostname, self.proxy.port or 8080, timeout=self.timeout)
            conn.set_tunnel(self.host, self.port)
        else:             # plain HTTP: the proxy gets the whole URL
            conn = http.client.HTTPConnection(self.proxy.hostname, self.proxy.port or 8080, timeout=self.timeout)
            path = self.url
        expired = threading.Event()

        def expire():
            expired.set()
            close_socket(conn)

        timer = threading.Timer(self.timeout, expire)
        timer.daemon = True
        with self.lock:
            self.open.add(conn)
        timer.start()
        try:
            try:
                conn.connect()
            except (TimeoutError, socket.timeout) as e:
                raise TransientError(type(e).__name__)
            except OSError as e:  # refused, unknown host, a certificate that does not verify
                if self.stop.is_set():
                    raise Stopped()
                raise ValueError(f"cannot reach {self.url}: {self.redact(str(e.strerror or e))}; "
                                 f"start the server or fix --base_url")
            conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
            response = conn.getresponse()
            raw = response.read(MAX_REPLY_BYTES + 1)
            reply = (response.status, raw, parse_retry_after(response.getheader("Retry-After")),
                     response.getheader("Location"))
        except (OSError, http.client.HTTPException) as e:
            if self.stop.is_set():
                raise Stopped()
            if expired.is_set():
                raise TransientError(f"no complete answer within --timeout={self.timeout:g}s")
            raise TransientError(type(e).__name__)
        finally:
            timer.cancel()
            with self.lock:
                self.open.discard(conn)
            conn.close()
        if expired.is_set():
            raise TransientError(f"no complete answer within --timeout={self.timeout:g}s")
        return reply

    def form_for(self, model: str) -> str:
        with self.lock:
            return self.forms[self.forms_index.get(model, 0)]

    def reject_form(self, model: str, form: str) -> bool:
        """The server refused `form` for `model`: move on to the next one (once, whichever worker saw it
        first; never back). False when there is none left to try."""
        with self.lock:
            index = self.forms_index.get(model, 0)
            if self.forms[index] == form and index + 1 < len(self.forms):
                self.forms_index[model] = index + 1
            return self.forms[self.forms_index.get(model, 0)] != form

    def request_body(self, model: str, messages: list[dict], form: str, structure: tuple[dict, str] | None) -> dict:
        body = {"model": model, "messages": messages, "temperature": self.temperature, "max_tokens": self.max_tokens}
        if structure is None or form == "off":
            return body
        schema, note = structure
        # the JSON note joins the system prompt (some servers take a single system message, at the start)
        if messages[0]["role"] == "system":
            messages = [{"role": "system", "content": f"{messages[0]['content']}\n\n{note}"}, *messages[1:]]
        else:
            messages = [{"role": "system", "content": note}, *messages]
        body["messages"] = messages
        if form == "json_schema":  # OpenAI, vLLM, SGLang, llama.cpp's own server
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "grades", "schema": schema}}
        else:                      # llama-cpp-python's server (which answers json_schema with HTTP 500)
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    def chat(self, model: str, messages: list[dict], structure: tuple[dict, str] | None = None) -> tuple[str, dict, str]:
        """One chat completion with retries: (answer text, {"prompt_tokens", "completion_tokens"}, the form
        asked: json_schema, json_object or off). structure = (JSON schema, a note saying so to the judge)
        asks for a JSON answer in the form --structured allows, falling back when the server rejects it."""
        attempt = 0
        while True:
            if self.stop.is_set():
                raise Stopped()
            form = self.form_for(model) if structure is not None else "off"
            body = self.request_body(model, messages, form, structure)
            try:
                status, raw, retry_after, location = self.post_once(body)
            except TransientError as e:
                status, failure = None, e
            if status is not None and 200 <= status < 300:
                break
            if status is not None:
                detail = self.redact(raw[:2000].decode("utf-8", "replace"))
                if 300 <= status < 400:
                    target = urllib.parse.urlsplit(location or "")
                    host = target.netloc.rpartition("@")[2]  # never the credentials a Location may carry
                    where = (f"{target.scheme}://{host}{target.path}" if host else target.path or "nowhere")[:200]
                    raise ValueError(f"{self.url} answered HTTP {status}, a redirect to {where}; judge.py does not "
                                     f"follow redirects (the key goes only to --base_url): set --base_url to the "
                                     f"address it points to")
                if form != "off" and status != 429 and re.search(r"response_format|json_schema|json_object", detail):
                    if self.reject_form(model, form):
                        continue  # the next form, at once: not a retry
                    raise ValueError(f"{self.url} refused response_format {form} for model {model!r} (HTTP {status}: "
                                     f"{detail[:200]!r}); try --structured=auto")
                if status != 429 and status < 500:
                    raise ValueError(f"{self.url} answered HTTP {status} for model {model!r}: "
                                     f"{detail[:300].replace(chr(10), ' ')}; check --base_url, --model and --api_key_env")
                failure = TransientError(f"HTTP {status}", retry_after)
            if attempt == self.retries:
                raise ValueError(f"{self.url} failed {self.retries + 1} times for model {model!r} (last: {failure}); "
                                 f"try again later, or raise --retries / --timeout")
            if self.stop.wait(retry_delay(attempt, failure.retry_after, self.backoff)):
                raise Stopped()
            attempt += 1
        if len(raw) > MAX_REPLY_BYTES:
            raise ValueError(f"{self.url} answered with more than {MAX_REPLY_BYTES >> 20} MiB; is it a chat-completions endpoint?")
        try:
            reply = json.loads(raw)
            message = reply["choices"][0]["message"]
        except (ValueError, RecursionError, KeyError, IndexError, TypeError):
            raise ValueError(f"{self.url} answered without choices[0].message for model {model!r}; "
                             f"is it an OpenAI-compatible chat-completions endpoint?")
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        return message_text(message), {"prompt_tokens": token_count(usage.get("prompt_tokens")),
                                       "completion_tokens": token_count(usage.get("completion_tokens"))}, form


def grade(client: ChatClient, protocol: Protocol, model: str, prompt: str, completion: str) -> dict:
    """Ask one judge for one grade; ask once more (the protocol's follow-up) when a score is missing.
    Returns the cache record body: status "ok" (the four category scores) or "unparsed" (never guessed);
    with the hackathon protocol, the judge's own OVERALL as `overall_judge` (None when it gave none)."""
    structure = None if client.structured == "off" else (protocol.json_schema(), protocol.json_note())
    messages = protocol.messages(prompt, completion)
    answer, usage, form = client.chat(model, messages, structure)
    answers, grades = [answer], parse_grades(answer, protocol.labels)
    if any(grades[k] is None for k in protocol.labels):
        messages = messages + [{"role": "assistant", "content": answer}, {"role": "user", "content": protocol.followup_prompt}]
        answer2, usage2, form = client.chat(model, messages, structure)
        answers.append(answer2)
        usage = {k: usage[k] + usage2[k] for k in usage}
        grades.update({k: v for k, v in parse_grades(answer2, protocol.labels).items() if v is not None})
    ok = scores_complete(grades)
    return {"judge": model, "status": "ok" if ok else "unparsed",
            "scores": {c: grades[c] for c in CATEGORIES} if ok else None,
            "overall_judge": grades.get("overall"), "age_group": grades.get("age_group"), "format": form,
            "answers": [client.redact(a) for a in answers], "usage": usage}


# -----------------------------------------------------------------------------
# The grade cache: append-only JSONL, one line per answered (settings, judge, prompt, completion), flushed
# and fsync'd as each answer arrives, so a crash loses at most the requests in flight. A line that cannot
# be read (a crash's NUL-filled block, a hand edit) is skipped and counted: its grade is asked again.

def grading_settings(protocol: Protocol, base_url: str, temperature: float, max_tokens: int, structured: str) -> dict:
    """Everything besides the judge model and the story that changes a grade: the protocol's id and every
    word it sends (prompts, follow-up, the JSON schema and note), the server, the sampling settings and
    --structured. Part of every cache key, so a run with other settings never reuses these grades."""
    return {"protocol": protocol.id, "system_prompt": protocol.system_prompt, "user_prompt": protocol.user_prompt,
            "followup_prompt": protocol.followup_prompt, "json_schema": protocol.json_schema(),
            "json_note": protocol.json_note(), "base_url": base_url.rstrip("/"), "temperature": float(temperature),
            "max_tokens": int(max_tokens), "structured": structured}


def client_settings(client: "ChatClient", protocol: Protocol) -> dict:
    return grading_settings(protocol, client.base_url, client.temperature, client.max_tokens, client.structured)


def cache_key(model: str, prompt: str, completion: str, settings: dict) -> str:
    return hashlib.sha256(json.dumps([settings, model, prompt, completion], sort_keys=True).encode()).hexdigest()


def is_cache_record(record) -> bool:
    """The shape grade() writes: what aggregate() reads from it is there and of the right type."""
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        return False
    usage, answers, scores = record.get("usage"), record.get("answers"), record.get("scores")
    return (record.get("status") in ("ok", "unparsed") and isinstance(answers, list)
            and all(isinstance(a, str) for a in answers) and isinstance(usage, dict)
            and all(bounded_number(usage.get(k), 0, MAX_TOKENS_REPORTED, whole=True) is not None
                    and isinstance(usage.get(k), int) for k in ("prompt_tokens", "completion_tokens"))
            and (record["status"] != "ok" or isinstance(scores, dict) and all(
                bounded_number(scores.get(c), 0, 10) is not None for c in CATEGORIES)))


class GradeCache:
    def __init__(self, path: pathlib.Path):
        self.path = path
        self.lock = threading.Lock()
        self.records = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            return
        data = path.read_bytes()
        complete, _, torn = data.rpartition(b"\n")
        if torn:  # a crash mid-write left a line without its newline: cut it off, its grade is asked again
            os.truncate(path, len(data) - len(torn))
        bad = []
        for i, line in enumerate(complete.split(b"\n")):
            if not line.strip(b" \t\r\0"):
                if line.strip():
                    bad.append(i + 1)  # NULs: a block the file system never wrote
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                record = None
            if not is_cache_record(record):
                bad.append(i + 1)
                continue
            self.records[record["key"]] = record
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            print(f"warning: {path}: skipped {len(bad)} line(s) that are not cache records (line {shown}); "
                  f"kept the other {len(self.records)} grades, the skipped ones are asked again", file=sys.stderr)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def add(self, key: str, record: dict) -> None:
        record = {"key": key, **record}
        line = (json.dumps(record) + "\n").encode()
        with self.lock:
            with open(self.path, "ab") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.records[key] = record


# -----------------------------------------------------------------------------
# Prompts and completions in.

def read_csv_rows(path: pathlib.Path, columns: tuple[str, ...]) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: the BOM a spreadsheet may write
            reader = csv.DictReader(f, restval="")
            twice = [c for c, n in collections.Counter(reader.fieldnames or []).items() if n > 1]
            if twice:
                raise ValueError(f"{path}: the header row names {', '.join(repr(c) for c in twice)} more than once; "
                                 f"give each column one name (the later column would hide the earlier one)")
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: no {', '.join(repr(c) for c in missing)} column (found: "
                                 f"{', '.join(reader.fieldnames or []) or 'nothing'}); the file needs a header "
                                 f"row with {' and '.join(repr(c) for c in columns)}")
            rows = list(reader)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text; save the CSV as UTF-8")
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV ({e})")
    for i, row in enumerate(rows):
        if None in row:
            raise ValueError(f"{path}: row {i + 2} has more fields than the header row; quote fields that hold commas")
    return rows


def read_submission_template(spec: str) -> tuple[list[str], list[dict]] | None:
    """(columns, rows) of a `prompt,completion` CSV whose completions are to be filled (the hackathon's
    submission file: each evaluation prompt on several rows); None for any other --prompts."""
    path = pathlib.Path(spec)
    if path.suffix.lower() != ".csv" or not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        header = next(csv.reader(f), [])
    if "prompt" not in header or "completion" not in header:
        return None
    rows = read_csv_rows(path, ("prompt", "completion"))
    for i, row in enumerate(rows):
        if not row["prompt"].strip():
            raise ValueError(f"{path}: row {i + 2} has an empty prompt; every row needs the story beginning to complete")
    if not rows:
        raise ValueError(f"{path}: no rows to fill")
    return header, rows


def read_jsonl_rows(path: pathlib.Path, columns: tuple[str, ...]) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i + 1} is not JSON ({e.msg}); one JSON object per line")
        except RecursionError:
            raise ValueError(f"{path}: line {i + 1} is nested too deeply; one flat JSON object per line")
        missing = [c for c in columns if not isinstance(row, dict) or not isinstance(row.get(c), str)]
        if missing:
            raise ValueError(f"{path}: line {i + 1} has no string field {', '.join(repr(c) for c in missing)}; "
                             f"each line needs {' and '.join(repr(c) for c in columns)}")
        rows.append(row)
    return rows


def read_table(path: pathlib.Path, columns: tuple[str, ...]) -> list[dict]:
    """Rows of a CSV or JSONL file that must have the given columns."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        return read_csv_rows(path, columns)
    if path.suffix.lower() == ".jsonl":
        return read_jsonl_rows(path, columns)
    raise ValueError(f"{path}: unknown format; use a .csv or .jsonl file")


def load_prompt_file(path: pathlib.Path) -> list[str]:
    """Prompts from a YAML list of strings (the TinyStories 'Evaluation prompts.yaml'), a CSV with a
    `prompt` column (the hackathon's submission format) or a JSONL with a `prompt` field."""
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # PyYAML comes with datasets / huggingface_hub
        try:
            prompts = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{path}: expected a YAML list of strings (story beginnings)")
    else:
        prompts = [row["prompt"] for row in read_table(path, ("prompt",))]
    # the same beginning twice would be judged twice and counted as two prompts
    prompts = list(dict.fromkeys(p for p in prompts if p.strip()))
    if not prompts:
        raise ValueError(f"{path}: no prompts in it")
    return prompts


def fetch_from_hub(spec: str) -> list[str]:
    """'hf:OWNER/NAME/PATH' -> that file of a hub dataset repo; 'hf:OWNER/NAME' -> the dataset's train
    split, which must have a `prompt` column."""
    parts = spec[len("hf:"):].split("/", 2)
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"--prompts={spec}: a hub id is hf:OWNER/NAME or hf:OWNER/NAME/FILE")
    repo_id = "/".join(parts[:2])
    try:
        if len(parts) == 3:
            from huggingface_hub import hf_hub_download
            local = pathlib.Path(hf_hub_download(repo_id, parts[2], repo_type="dataset"))
        else:
            import datasets
            rows = datasets.load_dataset(repo_id, split="train")
    except Exception as e:  # offline, unknown repo, gated, ...: all say the same to the user
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"--prompts={spec}: cannot fetch it from the Hugging Face hub ({type(e).__name__}: "
                         f"{first_line}); download the file and pass its local path")
    if len(parts) == 3:
        return load_prompt_file(local)
    if "prompt" not in rows.column_names:
        raise ValueError(f"--prompts={spec}: the dataset has no 'prompt' column (found: {', '.join(rows.column_names)})")
    return list(dict.fromkeys(p for p in rows["prompt"] if isinstance(p, str) and p.strip()))


def load_prompts(spec: str) -> list[str]:
    if spec == "default":
        return list(DEFAULT_PROMPTS)
    if spec == "tinystories":
        return fetch_from_hub(f"hf:{TINYSTORIES_PROMPTS_REPO}/{TINYSTORIES_PROMPTS_FILE}")
    if spec.startswith("hf:"):
        return fetch_from_hub(spec)
    return load_prompt_file(pathlib.Path(spec))


def load_completions(path: pathlib.Path) -> list[dict]:
    """Items from a submitted file: prompt ids in order of first appearance, samples numbered per prompt."""
    rows = read_table(path, ("prompt", "completion"))
    if not rows:
        raise ValueError(f"{path}: no rows; it needs 'prompt' and 'completion' for each completion")
    prompt_ids, samples_seen, items = {}, {}, []
    for row in rows:
        pid = prompt_ids.setdefault(row["prompt"], len(prompt_ids))
        sample = samples_seen[pid] = samples_seen.get(pid, -1) + 1
        items.append({"prompt_id": pid, "sample": sample, "prompt": row["prompt"], "completion": row["completion"]})
    return items


# -----------------------------------------------------------------------------
# Completions from a checkpoint. torch and the model are imported here, not at the top, so that
# judging a submitted file starts at once and needs no torch.

def generation_settings(args, prompts: list[str], samples: int | list[int]) -> dict:
    """Everything the completions depend on; its hash names the saved completions file."""
    st = os.stat(args.ckpt)
    return {"ckpt": str(pathlib.Path(args.ckpt).resolve()), "ckpt_bytes": st.st_size, "ckpt_mtime_ns": st.st_mtime_ns,
            "prompts_sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
            "samples": samples, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
            "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "batch_size": args.batch_size}


def generate_completions(ckpt_path: str, prompts: list[str], samples: int | list[int], max_new_tokens: int, temperature: float,
                         top_k: int | None, top_p: float | None, seed: int, batch_size: int, device: str) -> list[dict]:
    """--samples completions of every prompt, batched with the model's KV-cache generate. Each prompt is
    preceded by the delimiter, as every training document is, and generation stops at the delimiter."""
    import torch
    import model as model_lib

    try:  # model.py and prepare.py say what is wrong with a device, a checkpoint or its tokenizer in one line
        device = common.resolve_device(device)
    except ValueError as e:
        raise ValueError(f"--device: {e}")
    try:
        ckpt = model_lib.load_checkpoint(ckpt_path, map_location=device)
        gpt = model_lib.model_from_checkpoint(ckpt, device=device)
        enc = prepare.encoding_from_spec(ckpt["tokenizer"])
        delimiter = prepare.delimiter_id(enc)
    except ValueError as e:
        raise ValueError(f"--ckpt={ckpt_path}: {e}")
    gpt.eval()
    contexts = [[delimiter] + enc.encode_ordinary(p) for p in prompts]
    block_size = gpt.config.block_size
    room = block_size - max(len(c) for c in contexts)
    if room <= 0:
        raise ValueError(f"the longest prompt is {block_size - room} tokens, not shorter than the model's "
                         f"block_size {block_size}; use shorter prompts")
    if max_new_tokens > room:
        print(f"note: --max_new_tokens={max_new_tokens} capped to {room} so the longest prompt fits in block_size {block_size}")
        max_new_tokens = room
    counts = [samples] * len(prompts) if isinstance(samples, int) else samples  # per prompt
    jobs = [(pid, s) for pid in range(len(prompts)) for s in range(counts[pid])]
    generator = torch.Generator(device=device).manual_seed(seed)
    items = []
    # float32 throughout: the models are small and generation is seconds next to grading
    for i in tqdm(range(0, len(jobs), batch_size), desc="generating", unit="batch"):
        batch = jobs[i:i + batch_size]
        # valid_vocab: never sample the padding rows of a padded vocabulary
        outs = gpt.generate([contexts[pid] for pid, _ in batch], max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p, stop_token=delimiter, generator=generator,
                            valid_vocab=enc.n_vocab)
        for (pid, s), out in zip(batch, outs):
            items.append({"prompt_id": pid, "sample": s, "prompt": prompts[pid], "completion": enc.decode(out),
                          "new_tokens": len(out)})
    return items


def saved_or_generated_completions(args, prompts: list[str], cache_dir: pathlib.Path,
                                   samples: int | list[int] | None = None) -> tuple[list[dict], dict]:
    """Reuse the completions saved by an earlier run with the same settings, else generate and save them
    (before any grading, so an endpoint failure never costs the generation)."""
    samples = (args.samples or DEFAULT_SAMPLES) if samples is None else samples
    settings = generation_settings(args, prompts, samples)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"completions_{digest}.jsonl"
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        if lines and json.loads(lines[0]).get("generation") == settings:
            print(f"reusing {len(lines) - 1} saved completions from {path}")
            return [json.loads(line) for line in lines[1:]], {"generation": settings, "completions_file": str(path)}
    items = generate_completions(args.ckpt, prompts, samples, args.max_new_tokens, args.temperature,
                                 args.top_k, args.top_p, args.seed, args.batch_size, args.device)
    cache_dir.mkdir(parents=True, exist_ok=True)
    common.write_file_atomic(path, "".join(json.dumps(row) + "\n" for row in [{"generation": settings}] + items).encode())
    print(f"saved {len(items)} completions to {path}")
    return items, {"generation": settings, "completions_file": str(path)}


def fill_submission_template(args, columns: list[str], rows: list[dict]) -> list[dict]:
    """Every row's `completion` generated, rows kept in order: a prompt on k rows gets k samples, the j-th
    row the j-th sample (the saved completions are reused as for any --ckpt run)."""
    if args.samples is not None:
        raise ValueError(f"--samples does not apply with --prompts={args.prompts}: each of its rows is one sample "
                         f"(a prompt on 4 rows gets 4 completions); drop --samples")
    prompts = list(dict.fromkeys(row["prompt"] for row in rows))
    counts = collections.Counter(row["prompt"] for row in rows)
    items, _ = saved_or_generated_completions(args, prompts, pathlib.Path(args.cache_dir), [counts[p] for p in prompts])
    completion = {(it["prompt_id"], it["sample"]): it["completion"] for it in items}
    pid = {p: i for i, p in enumerate(prompts)}
    seen = collections.Counter()
    filled = []
    for row in rows:
        i = pid[row["prompt"]]
        filled.append({**row, "completion": completion[(i, seen[i])]})
        seen[i] += 1
    return filled


def write_completions_file(path: pathlib.Path, items: list[dict], columns: list[str] = ("prompt", "completion")) -> None:
    """The submission format that --completions reads back: CSV or JSONL with `prompt` and `completion`
    (and any other columns a filled template had, in its order)."""
    rows = [{c: it[c] for c in columns} for it in items]
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    elif path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(row) + "\n" for row in rows)
    else:
        raise ValueError(f"--generate_only={path}: use a .csv or .jsonl file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    common.write_file_atomic(path, text.encode("utf-8"))


# -----------------------------------------------------------------------------
# Grading every (judge, item) pair: cached answers first, the rest through a bounded thread pool.

def grade_all(items: list[dict], models: list[str], client: ChatClient, cache: GradeCache, concurrency: int,
              protocol: Protocol = PAPER) -> dict:
    """Fills the cache for every (model, item); returns usage counters for this run. The workers are
    daemon threads and the main thread only waits on a queue, so Ctrl-C stops the run at once: requests in
    flight are cut, the grades already answered stay in the cache (a second Ctrl-C kills outright). On a
    fatal error nothing more is sent, the requests in flight finish into the cache, and the error is raised."""
    todo, settings = {}, client_settings(client, protocol)
    for model in models:
        for it in items:
            key = cache_key(model, it["prompt"], it["completion"], settings)
            if cache.get(key) is None:
                todo[key] = (model, it["prompt"], it["completion"])  # identical items are graded once
    usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
             "reused": len(models) * len(items) - len(todo), "graded": 0}
    if not todo:
        return usage
    jobs, done = queue.SimpleQueue(), queue.SimpleQueue()
    for key, job in todo.items():
        jobs.put((key, job))
    failure = []

    def worker():
        while not client.stop.is_set():
            try:
                key, (model, prompt, completion) = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                record = grade(client, protocol, model, prompt, completion)
            except Stopped:
                return
            except Exception as e:  # ValueError: the endpoint is unusable; anything else is a bug, raised below
                failure.append(e)
                client.stop.set()
                return
            cache.add(key, record)
            with cache.lock:
                usage["requests"] += len(record["answers"])
                usage["prompt_tokens"] += record["usage"]["prompt_tokens"]
                usage["completion_tokens"] += record["usage"]["completion_tokens"]
                usage["graded"] += 1
            done.put(key)

    threads = [threading.Thread(target=worker, daemon=True, name=f"judge-{i}")
               for i in range(min(concurrency, len(todo)))]
    try:
        with tqdm(total=len(todo), desc="grading", unit="grade") as bar:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                try:  # a short wait: the main thread stays free to take Ctrl-C
                    done.get(timeout=0.2)
                    bar.update(1)
                except queue.Empty:
                    pass
            while not done.empty():
                done.get()
                bar.update(1)
    except KeyboardInterrupt:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C ends the process outright
        client.abort()
        cache.lock.acquire(timeout=5)  # no cache line is half written when the process exits
        print(f"interrupted: {usage['graded']} new grades of {len(todo)} saved in {cache.path}; "
              f"re-run the same command to resume", file=sys.stderr)
        raise
    if failure:
        if not isinstance(failure[0], ValueError):
            raise failure[0]
        raise ValueError(f"{failure[0]} ({usage['graded']} new grades of {len(todo)} saved in {cache.path}; "
                         f"re-run the same command to resume)")
    return usage


# -----------------------------------------------------------------------------
# Statistics: mean, sample standard deviation and a normal-approximation 95% confidence interval of the
# mean over items (n is hundreds in a real run, where the t and normal quantiles agree to 1%).

Z95 = statistics.NormalDist().inv_cdf(0.975)


def summarize(values: list[float]) -> dict:
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = statistics.fmean(values)
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = statistics.stdev(values)
    half = Z95 * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def score_table(rows: list[dict]) -> dict:
    """Per category (and overall = mean of the four per item) statistics over rows of {category: score};
    with the hackathon protocol also `overall_judge`, the OVERALL the judges gave, over the rows that have one."""
    table = {c: summarize([r[c] for r in rows]) for c in CATEGORIES}
    table["overall"] = summarize([sum(r[c] for c in CATEGORIES) / len(CATEGORIES) for r in rows])
    if any("overall_judge" in r for r in rows):
        table["overall_judge"] = summarize([r["overall_judge"] for r in rows if r.get("overall_judge") is not None])
    return table


def age_distribution(records: list[dict]) -> dict:
    counts = {letter: 0 for letter in AGE_GROUPS}
    counts["unknown"] = 0
    for r in records:
        counts[r["age_group"] if r["status"] == "ok" and r.get("age_group") in AGE_GROUPS else "unknown"] += 1
    return counts


def item_scores(record: dict, protocol: Protocol) -> dict:
    scores = dict(record["scores"])
    if protocol.name == "hackathon":
        scores["overall_judge"] = record.get("overall_judge")
    return scores


def mean_over_judges(scores: list[dict]) -> dict:
    row = {c: sum(s[c] for s in scores) / len(scores) for c in CATEGORIES}
    if "overall_judge" in scores[0]:
        given = [s["overall_judge"] for s in scores if s["overall_judge"] is not None]
        row["overall_judge"] = sum(given) / len(given) if given else None
    return row


def aggregate(items: list[dict], models: list[str], cache: GradeCache, settings: dict,
              protocol: Protocol = PAPER) -> dict:
    """The judge.json report: pooled block at the top level, then per-judge summaries and per-item rows.
    Pooled: each item's scores are first averaged over the judges that parsed it, then summarized over items.
    `overall` is always the mean of the four categories (the record's figure); with the hackathon protocol
    `overall_judge` is the judges' own OVERALL, beside it."""
    per_judge, rows = {}, []
    per_item = [[] for _ in items]
    records_of = {m: [cache.get(cache_key(m, it["prompt"], it["completion"], settings)) for it in items] for m in models}
    for model, records in records_of.items():
        ok = [item_scores(r, protocol) for r in records if r["status"] == "ok"]
        per_judge[model] = {"n": len(ok), "unparsed": len(records) - len(ok), "parse_rate": len(ok) / len(records),
                            "formats": dict(sorted(collections.Counter(r.get("format", "off") for r in records).items())),
                            "scores": score_table(ok)}
        if protocol.name == "paper":
            per_judge[model]["age_groups"] = age_distribution(records)
        for i, (it, r) in enumerate(zip(items, records)):
            if r["status"] == "ok":
                per_item[i].append(item_scores(r, protocol))
            rows.append({"prompt_id": it["prompt_id"], "sample": it["sample"], "judge": model,
                         "prompt": it["prompt"], "completion": it["completion"],
                         "scores": item_scores(r, protocol) if r["status"] == "ok" else "unparsed",
                         **({"age_group": r.get("age_group")} if protocol.name == "paper" else {}),
                         "format": r.get("format", "off"), "answers": r["answers"]})
    pooled_rows = [mean_over_judges(scores) for scores in per_item if scores]
    pooled = score_table(pooled_rows)
    all_records = [r for records in records_of.values() for r in records]
    block = {"judges": list(models), "n": len(pooled_rows),
             **{c: pooled[c]["mean"] for c in (*CATEGORIES, "overall")}, "ci95": pooled["overall"]["ci95"],
             "protocol": protocol.id}
    if protocol.name == "hackathon":
        block["overall_judge"] = pooled["overall_judge"]["mean"] if "overall_judge" in pooled else None
    unique = {r["key"]: r for r in all_records}.values()  # identical items share one answer
    usage_total = {"requests": sum(len(r["answers"]) for r in unique),
                   "prompt_tokens": sum(r["usage"]["prompt_tokens"] for r in unique),
                   "completion_tokens": sum(r["usage"]["completion_tokens"] for r in unique)}
    report = {**block, "items_total": len(items), "usage_total": usage_total,
              "unparsed": sum(1 for r in all_records if r["status"] != "ok"), "pooled": pooled}
    if protocol.name == "paper":
        report["age_groups"] = age_distribution(all_records)
    return {**report, "per_judge": per_judge, "items": rows}


def record_block(report: dict) -> dict:
    """The record's results.json `judge` block: judges, n, four category means, overall (their mean), ci95,
    the protocol's id, and with the hackathon protocol the judges' own OVERALL as overall_judge."""
    keys = ("judges", "n", *CATEGORIES, "overall", "ci95", "protocol", "overall_judge")
    return {k: report[k] for k in keys if k in report}


def write_record(record_dir: pathlib.Path, block: dict) -> None:
    """Set results.json's `judge` and keep everything else (leaderboard.update_record, atomic). A block
    without a single parsed grade has no scores (null means), which leaderboard.py would reject together
    with the whole record: it is refused here instead."""
    if block["n"] < 1:
        raise ValueError(f"no item got parseable grades from any judge, so there is no score to put into "
                         f"{record_dir / 'results.json'}; read the answers in judge.json, then try another --model")
    leaderboard.update_record(record_dir, "judge", block)


def check_record(record_dir: pathlib.Path) -> None:
    try:
        leaderboard.read_record(record_dir)
    except ValueError as e:
        raise ValueError(f"--record={record_dir}: {e}") from None


def print_summary(report: dict, usage: dict) -> None:
    def cell(stat):
        return "   -  " if stat["mean"] is None else f"{stat['mean']:6.2f}"

    columns = (*CATEGORIES, "overall") + (("overall_judge",) if "overall_judge" in report["pooled"] else ())
    print(f"{'judge':<28} {'n':>5} {'unparsed':>8} " + " ".join(f"{c:>13}" for c in columns) + "  95% CI (overall)")
    lines = [(m, j["n"], j["unparsed"], j["scores"]) for m, j in report["per_judge"].items()]
    if len(report["judges"]) > 1:
        lines.append(("pooled", report["n"], report["unparsed"], report["pooled"]))
    for name, n, unparsed, table in lines:
        ci = table["overall"]["ci95"]
        ci_text = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"
        print(f"{name[:28]:<28} {n:>5} {unparsed:>8} " + " ".join(
            f"{cell(table.get(c, {'mean': None})):>13}" for c in columns) + f"  {ci_text}")
    print("parsed: " + ", ".join(f"{m} {j['parse_rate']:.0%} (asked as {', '.join(f'{k} {v}' for k, v in j['formats'].items())})"
                                 for m, j in report["per_judge"].items()))
    if "age_groups" in report:
        print("age groups: " + ", ".join(f"{k} ({AGE_GROUPS.get(k, '?')}) {v}" if k in AGE_GROUPS else f"{k} {v}"
                                         for k, v in report["age_groups"].items()))
    print(f"tokens this run: {usage['prompt_tokens']:,} prompt + {usage['completion_tokens']:,} completion in "
          f"{usage['requests']:,} requests; {usage['reused']:,} grades reused from the cache")
    total = report["usage_total"]
    print(f"tokens for all these grades: {total['prompt_tokens']:,} prompt + {total['completion_tokens']:,} completion "
          f"in {total['requests']:,} requests")


# -----------------------------------------------------------------------------
# Command line.

def parse_args(argv=None) -> argparse.Namespace:
    p = common.ArgumentParser(prog="judge.py", description=__doc__)
    count, number = common.parse_count, common.parse_finite
    src = p.add_argument_group("what to judge (one of)")
    src.add_argument("--ckpt", help="checkpoint to generate completions from (model.save_checkpoint format)")
    src.add_argument("--completions", help="CSV or JSONL file with 'prompt' and 'completion' columns")
    gen = p.add_argument_group("prompts and generation (with --ckpt)")
    gen.add_argument("--prompts", default="default", help="'default' (the project's 52 beginnings), 'tinystories' "
                     "(the dataset's Evaluation prompts.yaml from the hub), a local .yaml/.csv/.jsonl file, "
                     "or hf:OWNER/NAME[/FILE] (a hub dataset with a 'prompt' column, or a file in it)")
    gen.add_argument("--samples", type=count, default=None, help="completions per prompt (default 4); with a "
                     "prompt,completion CSV as --prompts and --generate_only, each row is one sample instead")
    gen.add_argument("--max_new_tokens", type=count, default=300, help="length cap of a completion, in tokens")
    gen.add_argument("--temperature", type=number, default=1.0, help="sampling temperature (0 = greedy)")
    gen.add_argument("--top_k", type=count, default=None, help="sample from the k most likely tokens only")
    gen.add_argument("--top_p", type=number, default=None, help="nucleus sampling threshold")
    gen.add_argument("--seed", type=count, default=1337)
    gen.add_argument("--batch_size", type=count, default=32, help="sequences generated at once")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ...")
    jd = p.add_argument_group("the judge")
    jd.add_argument("--base_url", default="https://api.openai.com/v1", help="OpenAI-compatible API root (…/v1)")
    jd.add_argument("--model", action="append", default=[], help="judge model name; repeat for several judges")
    jd.add_argument("--api_key_env", default="OPENAI_API_KEY", help="NAME of the environment variable holding the "
                    "API key; give it empty (--api_key_env=) for a local server that needs no key")
    jd.add_argument("--api_key", help=argparse.SUPPRESS)  # only to refuse a key on the command line
    jd.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None, help="paper (default): the TinyStories "
                    "paper's prompt, an assessment then grades and an age group; hackathon: the TinyStories Hackathon "
                    "organisers' scoring, GRAMMAR/CREATIVITY/CONSISTENCY/PLOT/OVERALL from 1 to 10")
    jd.add_argument("--protocol_file", metavar="FILE.yaml", default=None, help="the hackathon protocol with the prompts "
                    "of a YAML file: system_prompt, user_prompt (with {story_start} and {completion}), followup_prompt")
    jd.add_argument("--structured", choices=("auto", "json_schema", "json_object", "off"), default="auto",
                    help="ask for the grades as a JSON object: auto tries response_format json_schema (OpenAI, vLLM, "
                    "llama.cpp server), then json_object with a schema (llama-cpp-python's server), then free text, "
                    "remembering per judge what the server took; off: free text only")
    jd.add_argument("--judge_temperature", type=number, default=None, help="default: the protocol's (paper 0, hackathon 0.1)")
    jd.add_argument("--judge_max_tokens", type=count, default=None, help="cap on each judge answer, in tokens "
                    "(default: the protocol's, paper 600, hackathon 128)")
    jd.add_argument("--concurrency", type=count, default=8, help="requests in flight at once")
    jd.add_argument("--retries", type=count, default=6, help="retries of a request on 429, 5xx and timeouts")
    jd.add_argument("--backoff", type=number, default=1.0, help="first retry wait in seconds, doubled each retry "
                    f"(a Retry-After header wins); no wait is longer than {MAX_WAIT:g} s")
    jd.add_argument("--timeout", type=number, default=120.0, help="seconds for one whole answer (connect, wait, "
                    "read); a slower one is cut off and retried")
    out = p.add_argument_group("output")
    out.add_argument("--out", default=None, help="report file (default judge.json, or DIR/judge.json with --record)")
    out.add_argument("--record", default=None, help="record folder whose results.json gets the `judge` block")
    out.add_argument("--cache_dir", default="data/judge_cache", help="saved completions and the grade cache")
    out.add_argument("--generate_only", metavar="FILE", default=None, help="with --ckpt: write the completions to "
                     "FILE (.csv or .jsonl, the submission format --completions reads) and stop; no judge is called")
    args = p.parse_args(argv)
    if args.api_key is not None:
        raise ValueError("judge.py takes no key on the command line (it would stay in the shell history and the "
                         "process list): export it, e.g. export OPENAI_API_KEY=..., and name the variable with --api_key_env")
    if bool(args.ckpt) == bool(args.completions):
        raise ValueError("give exactly one of --ckpt (generate completions) and --completions (judge a file)")
    if args.completions and args.prompts != "default":
        raise ValueError("--prompts has no effect with --completions (the file holds its prompts); drop one of them")
    if args.generate_only and not args.ckpt:
        raise ValueError("--generate_only needs --ckpt (it writes the completions a checkpoint generates)")
    if not args.model and not args.generate_only:
        raise ValueError("no judge: give --model=NAME (repeat it for several judges)")
    for name in ("samples", "max_new_tokens", "batch_size", "concurrency", "judge_max_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    if args.temperature < 0 or (args.top_k is not None and args.top_k < 1) or \
            (args.top_p is not None and not 0 < args.top_p <= 1):
        raise ValueError("--temperature must be >= 0, --top_k >= 1 and --top_p in (0, 1]")
    check_base_url(args.base_url)
    if args.retries < 0 or args.backoff < 0 or args.timeout <= 0 or (args.judge_temperature or 0) < 0:
        raise ValueError("--retries, --backoff and --judge_temperature must be >= 0 and --timeout > 0")
    if args.protocol_file and args.protocol == "paper":
        raise ValueError("--protocol_file holds prompts of the hackathon protocol; drop --protocol=paper")
    return args


def protocol_from_args(args) -> Protocol:
    if args.protocol_file:
        return load_protocol_file(pathlib.Path(args.protocol_file))
    return PROTOCOLS[args.protocol or "paper"]


def check_base_url(url: str) -> None:
    """An http(s) URL with a host, and no credentials in it: they would be printed and stored with it."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        parts = None
    if parts is not None and "@" in parts.netloc:
        raise ValueError("--base_url holds a user name or password (not shown here); remove them from the URL: "
                         "judge.py sends a key only as a bearer token, read from the variable --api_key_env names")
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise ValueError(f"--base_url={url}: expected an http:// or https:// URL ending in /v1, e.g. http://localhost:8000/v1")


ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")  # how environment variables are named; keys are not


def api_key_from_env(name: str) -> str | None:
    """The key from the named variable; None when the name is empty (a local server that needs no key).
    The name is printed only when it looks like a variable name: a key pasted by mistake is never echoed."""
    if not name:
        return None
    key = os.environ.get(name, "").strip()
    if key:
        return key
    if ENV_NAME.fullmatch(name):
        raise ValueError(f"no API key in ${name}; export {name}=... , name another variable with --api_key_env=VAR, "
                         f"or pass --api_key_env= for a local server that needs no key")
    raise ValueError("--api_key_env takes the NAME of the environment variable that holds the key (e.g. "
                     "--api_key_env=OPENAI_API_KEY), and no variable of the name given is set (not shown here: it "
                     "may be the key itself); export the key and name its variable, or --api_key_env= for no key")


def run(args) -> dict:
    if args.generate_only:  # a submission file, or sample stories for a record: no judge, no key
        if not os.path.isfile(args.ckpt):
            raise ValueError(f"--ckpt={args.ckpt}: no such file")
        if pathlib.Path(args.generate_only).suffix.lower() not in (".csv", ".jsonl"):
            raise ValueError(f"--generate_only={args.generate_only}: use a .csv or .jsonl file name")
        template = read_submission_template(args.prompts)
        if template:
            columns, rows = template
            items = fill_submission_template(args, columns, rows)
        else:
            columns = ("prompt", "completion")
            items, _ = saved_or_generated_completions(args, load_prompts(args.prompts), pathlib.Path(args.cache_dir))
        write_completions_file(pathlib.Path(args.generate_only), items, columns)
        print(f"wrote {len(items)} completions to {args.generate_only}")
        return {"items": items}
    protocol = protocol_from_args(args)  # a bad --protocol_file fails before any work
    api_key = api_key_from_env(args.api_key_env)
    cache_dir = pathlib.Path(args.cache_dir)
    record_dir = pathlib.Path(args.record) if args.record else None
    if record_dir:
        check_record(record_dir)  # fail before any work, not after it
    out = pathlib.Path(args.out) if args.out else (record_dir / "judge.json" if record_dir else pathlib.Path("judge.json"))
    models = list(dict.fromkeys(args.model))

    if args.completions:
        items = load_completions(pathlib.Path(args.completions))
        source = {"completions_file": str(pathlib.Path(args.completions).resolve()),
                  "completions_sha256": hashlib.sha256(pathlib.Path(args.completions).read_bytes()).hexdigest()}
    else:
        if not os.path.isfile(args.ckpt):
            raise ValueError(f"--ckpt={args.ckpt}: no such file")
        items, source = saved_or_generated_completions(args, load_prompts(args.prompts), cache_dir)

    cache = GradeCache(cache_dir / "grades.jsonl")
    temperature = protocol.temperature if args.judge_temperature is None else args.judge_temperature
    max_tokens = protocol.max_tokens if args.judge_max_tokens is None else args.judge_max_tokens
    client = ChatClient(args.base_url, api_key, args.timeout, args.retries, args.backoff, temperature, max_tokens,
                        args.structured)
    usage = grade_all(items, models, client, cache, args.concurrency, protocol)

    report = aggregate(items, models, cache, client_settings(client, protocol), protocol)
    report["settings"] = {"base_url": args.base_url, "protocol": protocol.name, "protocol_id": protocol.id,
                          **({"protocol_file": str(pathlib.Path(args.protocol_file).resolve())} if args.protocol_file else {}),
                          "structured": args.structured, "judge_temperature": temperature,
                          "judge_max_tokens": max_tokens, **source}
    report["usage_this_run"] = usage
    # the top-level block first, items last, so the file reads like the record
    out.parent.mkdir(parents=True, exist_ok=True)
    common.write_json_atomic(out, report)
    print_summary(report, usage)
    print(f"wrote {out}")
    if record_dir:
        write_record(record_dir, record_block(report))
        print(f"wrote the judge block into {record_dir / 'results.json'}")
    return report


def main(argv=None) -> int:
    def parse_and_run(arguments):
        run(parse_args(arguments))
    return common.run_main("judge.py", parse_and_run, argv)


if __name__ == "__main__":
    sys.exit(main())
