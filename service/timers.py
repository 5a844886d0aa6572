"""Timers whose callback waits its turn behind the callbacks already queued on the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def call_later_queued(
    loop: asyncio.AbstractEventLoop, delay: float, callback: Callable[..., Any], *args: Any
) -> asyncio.TimerHandle:
    """``loop.call_later(delay, callback, *args)``, except that once due, ``callback`` is queued with
    ``call_soon`` behind what is already queued rather than run at once.

    uvloop runs the timers that are due before the callbacks already queued. The service's timers (the
    observers' drain, the access log's flush, the CPU yield) would then cut in front of a request that is
    already parsed and whose batched run is queued: the request would wait for the whole drain. Queued
    behind, the request's response is written first. Cancelling the handle stops the callback only until it
    falls due: a callback already queued still runs, so it must check for itself that it is still wanted.
    """
    return loop.call_later(delay, loop.call_soon, callback, *args)
