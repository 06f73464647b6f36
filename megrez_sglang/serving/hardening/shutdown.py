"""8. SIGTERM drains with a deadline.

SGLang stops taking health checks and waits for the requests in flight, with no limit. Whatever
still runs MEGREZ_DRAIN_TIMEOUT_S seconds after SIGTERM is aborted (streams end with
finish_reason "abort"), so the server stops on its own, exit 0.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


DRAIN_TIMEOUT_ENV = "MEGREZ_DRAIN_TIMEOUT_S"
DEFAULT_DRAIN_TIMEOUT_S = 30.0


def sigterm_with_drain_deadline(sigterm_handler, signal_handler, *args, **kwargs):
    """AROUND-hook of tokenizer_manager.SignalHandler.sigterm_handler, which SGLang runs on the
    tokenizer manager's event loop: SGLang's drain (sigterm_watchdog) waits while any request is
    in flight; abort what is left at the deadline, and the drain then ends by itself."""
    sigterm_handler(signal_handler, *args, **kwargs)
    manager = signal_handler.tokenizer_manager
    deadline_s = float(os.environ.get(DRAIN_TIMEOUT_ENV, DEFAULT_DRAIN_TIMEOUT_S))

    def abort_what_is_left():
        if manager.rid_to_state:
            logger.warning("%d requests still running %.0f s after SIGTERM: aborting them",
                           len(manager.rid_to_state), deadline_s)
            manager.abort_request(abort_all=True)

    manager.event_loop.call_later(deadline_s, abort_what_is_left)
