"""Where the programs run: a running server, or a server this process starts (sgl.Runtime).

SGLang 0.5.23's frontend language has no backend on top of ``sgl.Engine``; its in-process path is
``sgl.Runtime``, which launches the HTTP server in this process tree (the card's workflow).
Both format conversations with the served checkpoint's own chat template (chat_template.py).
"""

from __future__ import annotations

import functools
import time

import sglang as sgl

from ..serving.engine import engine_args
from . import chat_template

# How often a request the server sheds (429: launch_server.sh's work bound) is sent again, waiting
# the Retry-After it names each time, before the program fails with the server's message.
MAX_OVERLOAD_RETRIES = 30


class ServerOverloaded(RuntimeError):
    """A 429 from the server: it holds as much work as it admits; `retry_after` seconds from it."""

    def __init__(self, content, retry_after: float):
        super().__init__(content)
        self.retry_after = retry_after


def _retrying_when_overloaded(method):
    """A RuntimeEndpoint method sent again after the Retry-After of a 429, as the openai client
    does (SGLang's frontend language has no retries of its own). These methods change the
    program's state only after their request succeeded, so sending it again is safe."""

    @functools.wraps(method)
    def send(self, *args, **kwargs):
        for attempt in range(MAX_OVERLOAD_RETRIES + 1):
            try:
                return method(self, *args, **kwargs)
            except ServerOverloaded as e:
                if attempt == MAX_OVERLOAD_RETRIES:
                    raise
                time.sleep(e.retry_after)

    return send


class OverloadAwareEndpoint(sgl.RuntimeEndpoint):
    """SGLang's RuntimeEndpoint, honouring launch_server.sh's 429 + Retry-After (the work bound,
    docs/serving.md "Overload") instead of failing the program at once."""

    def _assert_success(self, res):
        if res.status_code == 429:
            headers = getattr(getattr(res, "resp", res), "headers", None) or {}
            try:
                retry_after = min(60.0, max(0.1, float(headers.get("Retry-After", 1))))
            except ValueError:
                retry_after = 1.0
            try:
                content = res.json()
            except ValueError:
                content = res.text
            raise ServerOverloaded(content, retry_after)
        super()._assert_success(res)

    generate = _retrying_when_overloaded(sgl.RuntimeEndpoint.generate)
    select = _retrying_when_overloaded(sgl.RuntimeEndpoint.select)
    cache_prefix = _retrying_when_overloaded(sgl.RuntimeEndpoint.cache_prefix)
    commit_lazy_operations = _retrying_when_overloaded(sgl.RuntimeEndpoint.commit_lazy_operations)
    fill_image = _retrying_when_overloaded(sgl.RuntimeEndpoint.fill_image)


def endpoint(base_url: str, api_key: str | None = None) -> sgl.RuntimeEndpoint:
    """A running server (e.g. from launch_server.sh, here or on another machine). The chat
    template is derived from the server's own rendering of conversations (its model path need not
    be readable here) and checked against it in token ids. A request the server sheds (429) is
    sent again after its Retry-After."""
    template = chat_template.server_chat_template(base_url, api_key)
    return OverloadAwareEndpoint(base_url, api_key=api_key, chat_template_name=template.name)


def runtime(model_path: str, **server_args) -> sgl.Runtime:
    """Start a server for `model_path` in this process tree, with this host's settings.
    Its ``.endpoint`` is the backend (SGLang's lookup gives it the checkpoint's chat template);
    call ``.shutdown()`` when done."""
    chat_template.checkpoint_chat_template(model_path)  # a template error before a server starts
    args = engine_args(model_path, **server_args)
    args.setdefault("constrained_json_disable_any_whitespace", True)
    return sgl.Runtime(**args)
