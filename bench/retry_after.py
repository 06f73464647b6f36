"""How the soak's users answer a request the server sheds: launch_server.sh's work bound answers 429
with a Retry-After header (docs/serving.md, "Overload"); a well-behaved client waits that long and
sends the request again, as the openai client does by itself and the programs' endpoint does
(megrez_sglang.programs.backends.OverloadAwareEndpoint). The soak sends again only a 429: the
openai client's own retries (max_retries) would also resend 5xx answers and lost connections,
which the soak must count as errors. A module of its own so that tests can import it (the
locustfile, bench/soak_mix.py, monkey-patches the process that imports it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import openai

from megrez_sglang.programs.backends import MAX_OVERLOAD_RETRIES

T = TypeVar("T")
# The longest wait a Retry-After may ask for (launch_server.sh's are 1 to 60 s), as the openai
# client's own (it honours Retry-After up to 60 s).
MAX_RETRY_AFTER_S = 60.0


class HTTPError(Exception):
    """A non-2xx answer to one of the soak's raw HTTP requests (the openai client raises its own)."""

    def __init__(self, status: int, text: str, retry_after: str | None = None):
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status, self.retry_after = status, retry_after


def shed_retry_after_s(error: BaseException) -> float | None:
    """Seconds to wait when `error` is a 429 (the server shed the request), else None."""
    if isinstance(error, openai.RateLimitError):
        header = error.response.headers.get("retry-after")
    elif isinstance(error, HTTPError) and error.status == 429:
        header = error.retry_after
    else:
        return None
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(header)))
    except (TypeError, ValueError):  # no header, or an HTTP date: the openai client's first backoff
        return 1.0


def until_admitted(call: Callable[[], T], sleep: Callable[[float], None] = time.sleep,
                   max_retries: int = MAX_OVERLOAD_RETRIES) -> tuple[T, int]:
    """(call's result, how many times it was shed first): `call` sent again after each 429's
    Retry-After, at most `max_retries` times; any other failure is raised at once."""
    for shed in range(max_retries + 1):
        try:
            return call(), shed
        except Exception as e:
            wait = shed_retry_after_s(e)
            if wait is None or shed == max_retries:
                raise
            sleep(wait)
    raise AssertionError("unreachable")
