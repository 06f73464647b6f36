"""Where the programs run: a running server, or a server this process starts (sgl.Runtime).

SGLang 0.5.23's frontend language has no backend on top of ``sgl.Engine``; its in-process path is
``sgl.Runtime``, which launches the HTTP server in this process tree (the card's workflow).
"""

from __future__ import annotations

import sglang as sgl

from . import chat_template
from ..engine import engine_args


def endpoint(base_url: str, api_key: str | None = None) -> sgl.RuntimeEndpoint:
    """A running server (e.g. from launch_server.sh), with the Megrez chat format."""
    return sgl.RuntimeEndpoint(base_url, api_key=api_key, chat_template_name=chat_template.NAME)


def runtime(model_path: str, **server_args) -> sgl.Runtime:
    """Start a server for `model_path` in this process tree, with this host's settings.
    Its ``.endpoint`` is the backend; call ``.shutdown()`` when done."""
    args = engine_args(model_path, **server_args)
    args.setdefault("constrained_json_disable_any_whitespace", True)
    rt = sgl.Runtime(**args)
    rt.endpoint.chat_template = chat_template.megrez_chat_template()
    return rt
