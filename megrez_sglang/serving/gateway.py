"""SGLang's router (sglang-router 0.3.2, "SGLang Model Gateway") with the keys kept out of argv.

    MEGREZ_API_KEY=... [MEGREZ_ADMIN_API_KEY=...] \\
        python -m megrez_sglang.serving.gateway --worker-urls URL [URL ...] \\
            [sglang_router.launch_router flags]

sglang-router takes its keys only as flags (--api-key, --control-plane-api-keys), where every
local user sees them (ps). This starts sglang-router's own router (its argument parser, RouterArgs
and Rust Router, as its launch_router does) with the keys set on RouterArgs from the environment
instead:

* MEGREZ_API_KEY -> RouterArgs.api_key: the router answers 401 to inference requests without
  "Authorization: Bearer <key>", and sends the key to its workers, which must be started with the
  same MEGREZ_API_KEY (launch_server.sh does the same with it).
* MEGREZ_ADMIN_API_KEY -> one control-plane key with the admin role: the router's control plane
  (/workers: list, add, remove; /get_loads; /flush_cache) then takes this key only. Without a
  control-plane key sglang-router lets the API key manage workers, so when none is set a random
  one that nobody is told is used: the control plane is closed, as the server's control
  endpoints are without an admin key.

Both are removed from os.environ before the router starts. Defaults that differ from
sglang-router's: it listens on 127.0.0.1 (--host), and its Prometheus exporter on the same host
and a free port (sglang-router: 0.0.0.0:29000, so a second router on the machine panicked).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys

from .hardening import ADMIN_API_KEY_ENV, API_KEY_ENV, KeyConfigurationError, environment_keys
from .server import free_port

KEY_FLAGS = ("--api-key", "--control-plane-api-keys")
DEFAULT_HOST = "127.0.0.1"


def router_args(argv: list[str], environ: dict[str, str] | None = None):
    """sglang-router's RouterArgs for its command-line flags `argv`, keys from `environ` (default
    os.environ, from which they are removed)."""
    from sglang_router.router_args import RouterArgs

    key_flags = [a for a in argv if a.split("=", 1)[0] in KEY_FLAGS]
    if key_flags:
        raise KeyConfigurationError(
            f"{key_flags[0].split('=', 1)[0]} would put a key on the command line, where every local "
            f"user sees it (ps); set {API_KEY_ENV} / {ADMIN_API_KEY_ENV} instead")
    parser = argparse.ArgumentParser(prog="python -m megrez_sglang.serving.gateway",
                                     description=__doc__.split("\n\n")[0])
    RouterArgs.add_cli_args(parser, use_router_prefix=False)
    parser.set_defaults(host=DEFAULT_HOST, prometheus_host=None, prometheus_port=None)
    parsed = parser.parse_args(argv)
    parsed.prometheus_host = parsed.prometheus_host or parsed.host
    parsed.prometheus_port = parsed.prometheus_port or free_port(parsed.prometheus_host)
    args = RouterArgs.from_cli_args(parsed, use_router_prefix=False)
    environ = os.environ if environ is None else environ
    api_key, admin_key = environment_keys(environ)
    for name in (API_KEY_ENV, ADMIN_API_KEY_ENV):
        environ.pop(name, None)
    args.api_key = api_key
    args.control_plane_api_keys = [("admin", "megrez admin", admin_key or secrets.token_urlsafe(32), "admin")]
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = router_args(sys.argv[1:] if argv is None else argv)
    except KeyConfigurationError as e:
        print(f"megrez_sglang.serving.gateway: error: {e}", file=sys.stderr)
        return 2
    # What sglang_router.launch_router does, without its import of the debugging load balancer
    # (mini_lb), which imports all of sglang: ~10 s and ~300 MB more for this process.
    import setproctitle
    from sglang_router.router import Router

    setproctitle.setproctitle("sglang::router")
    args._validate_router_args()
    Router.from_args(args).start()  # blocks; SIGTERM: the requests in flight finish, then it returns
    return 0


if __name__ == "__main__":
    sys.exit(main())
