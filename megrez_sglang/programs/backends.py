"""Where the programs run: a running server, or a server this process starts (sgl.Runtime).

SGLang 0.5.23's frontend language has no backend on top of ``sgl.Engine``; its in-process path is
``sgl.Runtime``, which launches the HTTP server in this process tree (the card's workflow).
Both format conversations with the served checkpoint's own chat template (chat_template.py).
"""

from __future__ import annotations

import sglang as sgl

from ..engine import engine_args
from . import chat_template


def endpoint(base_url: str, api_key: str | None = None) -> sgl.RuntimeEndpoint:
    """A running server (e.g. from launch_server.sh, here or on another machine). The chat
    template is derived from the server's own rendering of conversations (its model path need not
    be readable here) and checked against it in token ids."""
    template = chat_template.server_chat_template(base_url, api_key)
    return sgl.RuntimeEndpoint(base_url, api_key=api_key, chat_template_name=template.name)


def runtime(model_path: str, **server_args) -> sgl.Runtime:
    """Start a server for `model_path` in this process tree, with this host's settings.
    Its ``.endpoint`` is the backend (SGLang's lookup gives it the checkpoint's chat template);
    call ``.shutdown()`` when done."""
    chat_template.checkpoint_chat_template(model_path)  # a template error before a server starts
    args = engine_args(model_path, **server_args)
    args.setdefault("constrained_json_disable_any_whitespace", True)
    return sgl.Runtime(**args)
