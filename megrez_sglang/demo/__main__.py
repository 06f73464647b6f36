"""python -m megrez_sglang.demo [--server-url URL | --model PATH] [--host 127.0.0.1] [--port 8501]

The demo page (page.py) on http://HOST:PORT. Without --server-url it first starts the SGLang
server itself (megrez_sglang.serving.server, what launch_server.sh runs) on MODEL, by default the
project's trained tiny checkpoint, so the first try needs no download; the server stops with the
page (Ctrl-C). The API key: MEGREZ_API_KEY in the environment, for the started server and the page.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from ..serving.server import ServerError, ServerProcess
from .replies import SERVER_URL_ENV

PAGE = Path(__file__).with_name("page.py")
DEFAULT_PAGE_PORT = 8501  # Streamlit's


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m megrez_sglang.demo", description=__doc__.split("\n\n")[1])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--server-url", metavar="URL",
                        help="a running launch_server.sh, e.g. http://127.0.0.1:30000 (default: start one)")
    source.add_argument("--model", metavar="PATH",
                        help="checkpoint for the server started here (default: the trained tiny checkpoint)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface the page listens on (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=DEFAULT_PAGE_PORT, help=f"default {DEFAULT_PAGE_PORT}")
    args = p.parse_args(argv)
    if args.server_url and not args.server_url.startswith(("http://", "https://")):
        p.error(f"--server-url must start with http:// or https://, got {args.server_url!r}")
    return args


def streamlit_options(host: str, port: int) -> dict:
    """Streamlit's settings for the page (its config option names)."""
    return {
        "server.address": host,
        "server.port": port,
        "server.headless": True,  # no browser opened from here
        "server.fileWatcherType": "none",
        "server.runOnSave": False,
        "browser.gatherUsageStats": False,  # Streamlit's telemetry: off
        "client.toolbarMode": "minimal",
        "client.showErrorDetails": "none",  # an unexpected error: no traceback in the page
        "global.developmentMode": False,
    }


def serve_page(host: str, port: int) -> None:
    """Run the page until Ctrl-C / SIGTERM (Streamlit's own server and signal handling)."""
    from streamlit.web import bootstrap

    options = streamlit_options(host, port)
    bootstrap.load_config_options(flag_options=options)
    bootstrap.run(str(PAGE), False, [], options)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    server = None
    if args.server_url is None:
        log = Path(tempfile.mkdtemp(prefix="megrez-demo-")) / "server.log"
        print(f"demo: starting the SGLang server on {args.model or 'the trained tiny checkpoint'} "
              f"(its log: {log}); a minute or two on a CPU", flush=True)
        try:
            server = ServerProcess(args.model, log_path=log)
        except ServerError as e:
            print(f"demo: error: {e}", file=sys.stderr)
            return 1
    os.environ[SERVER_URL_ENV] = server.url if server else args.server_url.rstrip("/")
    print(f"demo: the page talks to {os.environ[SERVER_URL_ENV]}; open http://{args.host}:{args.port}",
          flush=True)
    try:
        serve_page(args.host, args.port)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
