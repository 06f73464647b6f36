"""1-2. Keys travel in the environment, never in argv, and are redacted wherever SGLang shows its
settings.

MEGREZ_API_KEY / MEGREZ_ADMIN_API_KEY are read into ServerArgs.api_key / admin_api_key right
after SGLang parses its command line, then removed from os.environ so the scheduler and
detokenizer (which run model code) never inherit them. (The server process's own
/proc/<pid>/environ still holds them: readable by its owner only, like the rest of its memory.)
ServerArgs.resolved_dict() is what SGLang logs at start-up and what /server_info and
/get_server_info return (top level, and the scheduler's internal_states): the keys read
<redacted> there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

API_KEY_ENV = "MEGREZ_API_KEY"
ADMIN_API_KEY_ENV = "MEGREZ_ADMIN_API_KEY"

KEY_FIELDS = {"api_key": API_KEY_ENV, "admin_api_key": ADMIN_API_KEY_ENV}
REDACTED = "<redacted>"


class KeyConfigurationError(ValueError):
    """MEGREZ_API_KEY / MEGREZ_ADMIN_API_KEY are set in a way that would not protect anything."""


def environment_keys(base: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(MEGREZ_API_KEY, MEGREZ_ADMIN_API_KEY) from `base` (default os.environ), checked; an empty
    value means no key (`MEGREZ_API_KEY= ./launch_server.sh`)."""
    env = os.environ if base is None else base
    api_key, admin_key = env.get(API_KEY_ENV) or None, env.get(ADMIN_API_KEY_ENV) or None
    for name, value in ((API_KEY_ENV, api_key), (ADMIN_API_KEY_ENV, admin_key)):
        if value is not None and not value.strip():
            raise KeyConfigurationError(f"{name} is blank: unset it, or set a key")
        if value is not None and value != value.strip():
            raise KeyConfigurationError(f"{name} has leading or trailing whitespace; clients would "
                                        "have to send it verbatim in the Authorization header")
    if api_key and admin_key and api_key == admin_key:
        raise KeyConfigurationError(f"{ADMIN_API_KEY_ENV} equals {API_KEY_ENV}: every user would be "
                                    "an administrator; choose a different admin key")
    return api_key, admin_key


def keys_from_environment(server_args, *_args, **_kwargs):
    """AFTER-hook of sglang.srt.server_args.prepare_server_args (server main process): the keys
    from the environment, which the child processes then do not inherit."""
    for field, env_name in KEY_FIELDS.items():
        value = os.environ.pop(env_name, None)
        if value:
            if getattr(server_args, field):
                raise KeyConfigurationError(
                    f"both {env_name} and --{field.replace('_', '-')} are given; pass the key in "
                    f"{env_name} only (a command-line flag is visible to every local user in ps)")
            setattr(server_args, field, value)
    return server_args


def redact_keys(resolved: dict[str, Any], *_args, **_kwargs) -> dict[str, Any]:
    """AFTER-hook of ServerArgs.resolved_dict (every process): what SGLang logs and serves."""
    for field in KEY_FIELDS:
        if resolved.get(field):
            resolved[field] = REDACTED
    return resolved
