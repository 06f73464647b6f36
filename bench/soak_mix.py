"""The soak's request mix, as a Locust user class (the locustfile that `python -m bench.soak` hands
to Locust; it runs in Locust's process, which gevent monkey-patches on import: that is why it is a
module of its own, and why nothing else imports it).

What is this project's own is only the traffic: every user loops over the mix, each starting at
another kind: a chat completion (openai client), a streamed chat read to the end, a /generate
stream the user hangs up on after half of its tokens, a chat under response_format json_schema
(the reply validated with jsonschema), a regex-constrained /generate, and a frontend-language
program forking 3 branches (solve_math_self_consistent, k=3: several requests). Half of the
prompts come from small fixed pools, half are fresh, so that the radix cache sees hits and
misses. A request fails on an exception, a non-2xx reply or a reply failing its own check
(finish_reason, schema, regex, a box in every branch).

Locust does the rest: the users, the timing (each kind is one request name; a request's time is
until its reply was read and checked, a dropped stream's until the user hung up), percentiles,
the CSV files and the HTML report. The server's API key comes from MEGREZ_API_KEY (never from the
command line).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import re
import time
from collections.abc import Callable

import jsonschema
import locust.stats
import openai
import requests
from locust import User, constant, events, task

from bench.retry_after import HTTPError, until_admitted  # Locust runs with the checkout as cwd
from megrez_sglang.programs import answer_json_schema, endpoint, solve_math_self_consistent
from megrez_sglang.serving.server import SERVED_MODEL_NAME
from megrez_sglang.training.tiny_corpus import choice_item, fact_items, random_math_key

# stats_history.csv's percentiles are over a sliding window of the last N seconds; one minute
# makes each row read a minute's p50/p99 (locust.stats documents these module settings for
# locustfiles, as it does CSV_STATS_INTERVAL_SEC).
locust.stats.CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW = 60

KINDS = ("chat", "stream", "dropped_stream", "json", "regex", "program")
HOT_SHARE = 0.5  # prompts drawn from the fixed pools (radix cache hits); the rest are fresh
HOT_POOL = 8  # fixed prompts per pool built here (the facts are a pool of their own)
CHAT_TOKENS, DROPPED_TOKENS, JSON_TOKENS, REGEX_TOKENS = 32, 32, 32, 12
PROGRAM_BRANCHES, PROGRAM_REASONING_TOKENS = 3, 32
VERDICT_REGEX = r"(是|否)，[0-9]{1,3}"
REQUEST_TIMEOUT_S = 300
API_KEY_ENV = "MEGREZ_API_KEY"


class CheckFailed(Exception):
    """A reply that arrived (2xx) but fails its own check; the message starts with the check."""

    def __init__(self, check: str, message: str):
        super().__init__(f"check {check}: {message}")


class Prompts:
    """One user's prompts: HOT_SHARE of them from fixed pools shared by every user, the rest
    fresh (random numbers)."""

    def __init__(self, rng: random.Random, pools: dict[str, list]):
        self.rng, self.pools = rng, pools

    def pick(self, pool: str, fresh: Callable[[], object]):
        return self.rng.choice(self.pools[pool]) if self.rng.random() < HOT_SHARE else fresh()

    def math_question(self) -> str:
        op, a, b = random_math_key(self.rng)
        return f"计算：{a} {op} {b} = ?" if self.rng.random() < 0.5 else f"Compute {a} {op} {b}."

    def chat(self) -> str:
        return self.pick("facts", self.math_question)

    def story(self) -> str:
        return self.pick("completions", lambda: f"第{self.rng.randrange(10**6)}个故事：")

    def choice(self):
        return self.pick("choices", lambda: choice_item(self.rng, self.rng.choice(("zh", "en"))))

    def verdict(self) -> str:
        return self.pick("verdicts", lambda: f"问题 {self.rng.randrange(10**6)}：对吗？回答：")

    def question(self) -> str:
        return self.pick("questions", self.math_question)


def prompt_pools(seed: int) -> dict[str, list]:
    rng = random.Random(f"soak/{seed}")
    facts = fact_items()
    prompts = Prompts(rng, {})
    return {"facts": [i.prompt for i in facts if i.kind == "fact"],
            "completions": [i.prompt for i in facts if i.kind == "completion"],
            "choices": [choice_item(rng, ("zh", "en")[i % 2]) for i in range(HOT_POOL)],
            "verdicts": [f"问题 {i}：对吗？回答：" for i in range(HOT_POOL)],
            "questions": [prompts.math_question() for _ in range(HOT_POOL)]}


class Traffic:
    """The requests of the mix against one server; each method sends one and checks the reply,
    or raises."""

    def __init__(self, url: str, api_key: str | None):
        self.url = url
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        # max_retries=0: the openai client would also resend 5xx answers and lost connections,
        # hiding errors; a 429 is sent again by until_admitted (bench/retry_after.py)
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key or "none", max_retries=0,
                                    timeout=REQUEST_TIMEOUT_S)
        self.backend = endpoint(url, api_key=api_key)

    def generate(self, body: dict, stream: bool = False) -> requests.Response:
        r = self.session.post(f"{self.url}/generate", json=body, stream=stream, timeout=REQUEST_TIMEOUT_S)
        if r.status_code != 200:
            text = r.text
            r.close()
            raise HTTPError(r.status_code, text, r.headers.get("Retry-After"))
        return r

    def chat(self, p: Prompts) -> None:
        r = self.client.chat.completions.create(
            model=SERVED_MODEL_NAME, max_tokens=CHAT_TOKENS, temperature=0.7, top_p=0.9,
            messages=[{"role": "user", "content": p.chat()}])
        choice = r.choices[0]
        if choice.finish_reason not in ("length", "stop"):
            raise CheckFailed("finish_reason", f"finish_reason {choice.finish_reason!r}")
        if not isinstance(choice.message.content, str) or r.usage.completion_tokens > CHAT_TOKENS:
            raise CheckFailed("reply", f"content {choice.message.content!r}, "
                              f"{r.usage.completion_tokens} completion tokens (max {CHAT_TOKENS})")

    def stream(self, p: Prompts) -> None:
        finish = []
        for chunk in self.client.chat.completions.create(
                model=SERVED_MODEL_NAME, max_tokens=CHAT_TOKENS, temperature=0.7, top_p=0.9,
                stream=True, messages=[{"role": "user", "content": p.chat()}]):
            finish += [c.finish_reason for c in chunk.choices if c.finish_reason]
        if len(finish) != 1 or finish[0] not in ("length", "stop"):
            raise CheckFailed("finish_reason", f"finish_reason(s) {finish} (one of length, stop expected)")

    def dropped_stream(self, p: Prompts) -> None:
        """Reads half of the stream's tokens, then hangs up (closes the connection)."""
        half, events_read = DROPPED_TOKENS // 2, 0
        body = {"text": p.story(), "stream": True,
                "sampling_params": {"max_new_tokens": DROPPED_TOKENS, "ignore_eos": True,
                                    "temperature": 0.7}}
        with self.generate(body, stream=True) as r:
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    events_read += 1
                    if events_read == half:
                        break
        if events_read != half:
            raise CheckFailed("stream", f"the stream ended after {events_read} events, before {half}")

    def json(self, p: Prompts) -> None:
        item = p.choice()
        schema = answer_json_schema(item.letters)
        r = self.client.chat.completions.create(
            model=SERVED_MODEL_NAME, max_tokens=JSON_TOKENS, temperature=0.7,
            messages=[{"role": "user", "content": item.prompt}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "choice", "schema": schema, "strict": True}})
        choice = r.choices[0]
        if choice.finish_reason != "stop":
            raise CheckFailed("finish_reason", f"finish_reason {choice.finish_reason!r} "
                              f"(stop expected), content {choice.message.content!r}")
        try:
            jsonschema.validate(json.loads(choice.message.content), schema)
        except (ValueError, jsonschema.ValidationError) as e:
            raise CheckFailed("schema", f"{choice.message.content!r}: {str(e).splitlines()[0]}") from None

    def regex(self, p: Prompts) -> None:
        with self.generate({"text": p.verdict(), "sampling_params": {
                "max_new_tokens": REGEX_TOKENS, "temperature": 0.8, "regex": VERDICT_REGEX}}) as r:
            reply = r.json()
        if not re.fullmatch(VERDICT_REGEX, reply["text"]):
            raise CheckFailed("regex", f"{reply['text']!r} does not match {VERDICT_REGEX}")

    def program(self, p: Prompts) -> None:
        vote = solve_math_self_consistent(p.question(), self.backend, k=PROGRAM_BRANCHES,
                                          reasoning_max_tokens=PROGRAM_REASONING_TOKENS,
                                          temperature=0.7, top_p=0.9)
        boxed = [s.answer for s in vote.samples]
        if len(boxed) != PROGRAM_BRANCHES or None in boxed:
            raise CheckFailed("program", f"branch answers {boxed} ({PROGRAM_BRANCHES} boxes expected)")


@events.init_command_line_parser.add_listener
def _soak_options(parser) -> None:
    parser.add_argument("--soak-seed", type=int, default=0, help="seed of the prompt pools and users")
    parser.add_argument("--soak-final-csv", help="write Locust's final tables to PREFIX_stats.csv and "
                        "PREFIX_failures.csv once every request has finished")


@events.quitting.add_listener
def _write_final_tables(environment, **_kwargs) -> None:
    """--csv files are rewritten once a second by a greenlet that may miss the last requests of
    the drain (--stop-timeout); `quitting` fires after the runner has stopped, so these tables,
    written by Locust's own CSV writer, hold every request."""
    prefix = environment.parsed_options.soak_final_csv
    if prefix:
        tables = locust.stats.StatsCSV(environment, locust.stats.PERCENTILES_TO_REPORT)
        with open(f"{prefix}_stats.csv", "w", newline="") as f:
            tables.requests_csv(csv.writer(f))
        with open(f"{prefix}_failures.csv", "w", newline="") as f:
            tables.failures_csv(csv.writer(f))


_user_indices = itertools.count()


class SoakUser(User):
    """One client of the soak: the mix in order from kind `index`, back to back."""

    wait_time = constant(0)

    def on_start(self) -> None:
        seed = self.environment.parsed_options.soak_seed
        self.index = self.next_kind = next(_user_indices)
        self.prompts = Prompts(random.Random(f"soak/{seed}/client/{self.index}"), prompt_pools(seed))
        self.traffic = Traffic(self.host.rstrip("/"), os.environ.get(API_KEY_ENV) or None)

    @task
    def next_request(self) -> None:
        kind = KINDS[self.next_kind % len(KINDS)]
        self.next_kind += 1
        start, failure = time.perf_counter(), None
        try:  # timed with the waits a shed request (429) spends before it is sent again
            until_admitted(lambda: getattr(self.traffic, kind)(self.prompts))
        except Exception as e:  # noqa: BLE001  (every failure is counted by Locust, none stops the user)
            failure = e
        # Locust's documented way to time a client of its own (its HttpUser would time only the
        # headers of a stream, and a frontend-language program is several requests).
        self.environment.events.request.fire(
            request_type="soak", name=kind, response_time=(time.perf_counter() - start) * 1000,
            response_length=0, exception=failure, context={"user": self.index})
