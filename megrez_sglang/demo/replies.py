"""What the demo page asks the server, through its OpenAI API, with the card's sampling defaults:

* chat: the conversation, streamed;
* math: the card's \\boxed{} instruction (prompts/), reasoning streamed, then the box under the
  server's grammar (programs.openai_recipes.openai_math); the answer read from the box;
* multiple choice: the card's answer-field instruction, reasoning streamed, then
  ``{"answer": "<L>"}`` under the answer grammar, L one of the item's letters (openai_choice).

Every failure the server or the network can cause comes back as DemoError, whose message is one
readable line (the server's own message for a 4xx) and never holds the API key.
"""

from __future__ import annotations

import re

import openai

from ..programs.choice import ChoiceResult
from ..programs.math import MathResult
from ..programs.openai_recipes import CARD_SAMPLING, TextSink, chat_text, openai_choice, openai_math
from ..serving.hardening import API_KEY_ENV

MODES = ("chat", "math", "choice")
SERVER_URL_ENV = "MEGREZ_DEMO_SERVER_URL"  # where the page finds the server (set by __main__)
CHAT_MAX_TOKENS = 512
_CJK = re.compile(r"[\u3400-\u9fff]")


class DemoError(RuntimeError):
    """A request the page could not complete; str() is what the page shows."""


def question_language(question: str) -> str:
    """The card's prompt language for a question: Chinese when it holds Chinese characters."""
    return "zh" if _CJK.search(question) else "en"


def parse_options(text: str) -> list[str]:
    """The options of a multiple-choice question, one a line (blank lines skipped)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _server_message(body) -> str | None:
    """The message in an error body: OpenAI's {"error": {"message"}}, {"error": "..."}, SGLang's
    {"message"}, FastAPI's {"detail"}."""
    if not isinstance(body, dict):
        return str(body) if body else None
    error = body.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str) and error:  # the API key check's {"error": "Unauthorized"}
        return error
    for field in ("message", "detail"):
        if body.get(field):
            return str(body[field])
    return None


def readable_error(error: Exception, server_url: str, api_key: str | None) -> DemoError:
    """`error` (raised by the openai client) as one line for the page, the key masked."""
    if isinstance(error, openai.APITimeoutError):
        message = f"the server at {server_url} did not answer in time"
    elif isinstance(error, openai.APIConnectionError):
        message = (f"the server at {server_url} is not reachable (is launch_server.sh running? "
                   "Start it, or give its address with --server-url)")
    elif isinstance(error, openai.APIStatusError):
        detail = _server_message(error.body) or error.response.reason_phrase
        message = f"the server answered {error.status_code}: {detail}"
        if error.status_code == 401:
            message += f" (set {API_KEY_ENV} to the server's API key)"
    else:
        message = f"{type(error).__name__}: {error}"
    if api_key:
        message = message.replace(api_key, "***")
    return DemoError(" ".join(message.split()))


class DemoClient:
    """The running server behind the page: its OpenAI API at `server_url`/v1."""

    def __init__(self, server_url: str, api_key: str | None, timeout_s: float = 600.0):
        self.server_url = server_url.rstrip("/")
        self.api_key = api_key
        # No retries: a server that is down says so at once, not after the client's back-off.
        self.client = openai.OpenAI(base_url=f"{self.server_url}/v1", api_key=api_key or "none",
                                    timeout=timeout_s, max_retries=0)
        self._model: str | None = None

    def _call(self, request):
        try:
            return request()
        except openai.OpenAIError as e:
            raise readable_error(e, self.server_url, self.api_key) from None

    def model(self) -> str:
        """The served model's name (the server's first, and only, model)."""
        if self._model is None:
            models = self._call(lambda: self.client.models.list().data)
            if not models:
                raise DemoError(f"the server at {self.server_url} serves no model")
            self._model = models[0].id
        return self._model

    def chat(self, messages: list[dict], on_text: TextSink, *, max_tokens: int = CHAT_MAX_TOKENS,
             **sampling) -> str:
        """The assistant's reply to `messages`, streamed to `on_text`."""
        sampling = {**CARD_SAMPLING, **sampling}
        model = self.model()
        text, _ = self._call(lambda: chat_text(self.client, on_text, model=model, messages=messages,
                                               max_tokens=max_tokens, **sampling))
        return text

    def math(self, question: str, on_text: TextSink, *, reasoning_max_tokens: int = CHAT_MAX_TOKENS,
             **sampling) -> MathResult:
        model = self.model()
        return self._call(lambda: openai_math(self.client, model, question, lang=question_language(question),
                                              reasoning_max_tokens=reasoning_max_tokens, on_text=on_text,
                                              **sampling))

    def choice(self, question: str, options: list[str], on_text: TextSink, *,
               reasoning_max_tokens: int = CHAT_MAX_TOKENS, **sampling) -> ChoiceResult:
        if len(options) < 2:
            raise DemoError(f"a multiple-choice question needs at least 2 options (one a line), got "
                            f"{len(options)}")
        model = self.model()
        try:
            return self._call(lambda: openai_choice(self.client, model, question, options,
                                                    lang=question_language(question),
                                                    reasoning_max_tokens=reasoning_max_tokens,
                                                    on_text=on_text, **sampling))
        except ValueError as e:  # the prompt's own checks (e.g. more options than letters)
            raise DemoError(str(e)) from None
