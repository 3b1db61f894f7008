"""One place where every ROS callback of the node is kept from dying on bad input.

Every service handler of the mapping node is wrapped with :func:`guarded_service`: a request
whose handler raises (whatever the exception type) is answered with ``success: false`` and the
reason in ``message``, and the error is logged; the node keeps running. Topic and timer
callbacks are wrapped with :func:`guarded_callback` (logged, throttled, never raised). The
action's execute callback has its own guard in :mod:`.train_part` (it must abort the goal).

Expected refusals (bad paths, bad requests, unreadable files) are raised by the handlers as
:class:`ValueError` subclasses (``PathRefused``, ``CaptureError``, ``SceneError`` ...) and
answered as ``refused: ...``; anything else is an internal error, answered with its type and
message and logged at ERROR level.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

#: Longest reason put into a reply (a huge exception text must not become a huge message).
MAX_REASON_CHARS = 2000


def reason_of(exc: BaseException) -> str:
    """The exception's message, bounded; its type name where it carries no message."""
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + " ..."


def guarded_service(what: str, logger: Callable[[], Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a service handler ``(req, resp) -> resp`` (``resp`` has ``success`` and
    ``message``): any exception becomes ``success=False`` with the reason; never raises."""

    def wrap(handler: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handler)
        def inner(*args: Any) -> Any:
            resp = args[-1]
            try:
                return handler(*args)
            except (ValueError, OSError) as exc:  # refusals: PathRefused, CaptureError, SceneError ...
                message = f"refused: {reason_of(exc)}"
                _log(logger, "warning", f"{what}: {message}")
            except Exception as exc:  # noqa: BLE001 - the service must answer, whatever happened
                message = f"internal error: {type(exc).__name__}: {reason_of(exc)}"
                _log(logger, "error", f"{what}: {message}")
            if hasattr(resp, "success"):
                resp.success = False
            if hasattr(resp, "message"):
                resp.message = message
            return resp

        return inner

    return wrap


def guarded_callback(what: str, logger: Callable[[], Any]) -> Callable[[Callable[..., Any]], Callable[..., None]]:
    """Decorator for a topic or timer callback: any exception is logged, never raised."""

    def wrap(callback: Callable[..., Any]) -> Callable[..., None]:
        @functools.wraps(callback)
        def inner(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as exc:  # noqa: BLE001 - a message must never kill the node
                why = f"{type(exc).__name__}: {reason_of(exc)}"
                _log(logger, "error", f"{what}: dropped after an unexpected error: {why}")

        return inner

    return wrap


def _log(logger: Callable[[], Any], level: str, message: str) -> None:
    try:
        getattr(logger(), level)(message)
    except Exception:  # noqa: BLE001 - logging after shutdown: nothing left to tell
        pass


__all__ = ["MAX_REASON_CHARS", "guarded_callback", "guarded_service", "reason_of"]
