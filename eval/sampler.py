"""Asking the model: the openai client against an SGLang server, concurrently.

With --constrained (the default) math and multiple choice go through the structured-output
recipes: the model reasons first (within the benchmark's max_tokens, or --reasoning-max-tokens),
then the final answer is forced into \\boxed{} (the server's grammar backend's form of it), the
letter into {"answer": "<L>"} with only the item's letters. With --free every item is one plain
chat request and the benchmark reads the answer out of the text. IFEval and code are free text
either way. Every sample has its own seed, derived from --seed, the benchmark, the item and the
sample index; it is sent only to a server that applies per-request seeds (SGLang's
--enable-deterministic-inference), and launch_server.sh's server refuses a seed it would drop:
elsewhere a run at temperature > 0 samples anew each time (at temperature 0 it is reproducible).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass

import openai

from megrez_sglang.programs.openai_recipes import boxed_math_reply, choice_reply, server_grammar_backend

from .benchmark import Benchmark, Item, Sample


@dataclass
class SamplingConfig:
    temperature: float = 0.7  # the card's
    top_p: float = 0.9
    seed: int = 0
    constrained: bool = True
    max_tokens: int | None = None  # default: the benchmark's
    reasoning_max_tokens: int | None = None  # constrained math and choice: the reasoning budget

    def as_dict(self) -> dict:
        return asdict(self)


def sample_seed(seed: int, benchmark: str, item_id: str, index: int) -> int:
    digest = hashlib.sha256(f"{seed}/{benchmark}/{item_id}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class ServerSampler:
    def __init__(self, base_url: str, config: SamplingConfig, api_key: str | None = None,
                 model: str | None = None, timeout_s: float = 600):
        self.client = openai.OpenAI(base_url=f"{base_url.rstrip('/')}/v1", api_key=api_key or "EMPTY",
                                    timeout=timeout_s, max_retries=2)
        self.model = model or self.client.models.list().data[0].id
        self.config = config
        self.base_url, self.api_key = base_url.rstrip("/"), api_key
        self.grammar_backend = server_grammar_backend(self.client)  # None: the regex form of the box
        self.sends_seeds = self._get("/server_info").get("enable_deterministic_inference") is True

    def _get(self, path: str) -> dict:
        """A GET of an SGLang information endpoint; {} from a server that does not have it."""
        import requests

        try:
            r = requests.get(f"{self.base_url}{path}", timeout=10,
                             headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})
            return r.json() if r.ok else {}
        except (requests.RequestException, ValueError):  # not an SGLang server
            return {}

    def model_path(self) -> str:
        """The checkpoint the server serves (SGLang's /get_model_info), else the served name."""
        return self._get("/get_model_info").get("model_path") or self.model

    def sample(self, bench: Benchmark, item: Item, index: int) -> Sample:
        c = self.config
        params = {"temperature": c.temperature, "top_p": c.top_p}
        if self.sends_seeds:
            params["seed"] = sample_seed(c.seed, bench.name, item.id, index)
        max_tokens = c.max_tokens or bench.max_tokens
        messages = [{"role": "user", "content": item.prompt}]
        start = time.perf_counter()
        if c.constrained and bench.kind == "math":
            r = boxed_math_reply(self.client, self.model, messages, grammar_backend=self.grammar_backend,
                                 reasoning_max_tokens=c.reasoning_max_tokens or max_tokens, **params)
            return Sample(r.text, r.answer, r.completion_tokens, time.perf_counter() - start)
        if c.constrained and bench.kind == "choice":  # reasoning first, as the card's figures were
            budget = max_tokens if c.reasoning_max_tokens is None else c.reasoning_max_tokens
            r = choice_reply(self.client, self.model, messages, item.letters, reasoning_max_tokens=budget,
                             **params)
            return Sample(r.text, r.letter, r.completion_tokens, time.perf_counter() - start)
        reply = self.client.chat.completions.create(model=self.model, messages=messages,
                                                    max_tokens=max_tokens, **params)
        text = reply.choices[0].message.content or ""
        return Sample(text, bench.extract(item, text), reply.usage.completion_tokens,
                      time.perf_counter() - start)
