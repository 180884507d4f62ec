"""X-Worker: the pid of the process that answered, set outside the cache middleware."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase


def worker_header(get_response: Callable[[HttpRequest], Any]) -> Any:
    """Runs natively in both modes, so the ASGI server adds no thread hop for it."""
    if iscoroutinefunction(get_response):
        aget: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = get_response

        async def amw(request: HttpRequest) -> HttpResponseBase:
            response = await aget(request)
            response["X-Worker"] = str(os.getpid())
            return response

        markcoroutinefunction(amw)
        return amw

    def mw(request: HttpRequest) -> HttpResponseBase:
        response: HttpResponseBase = get_response(request)
        response["X-Worker"] = str(os.getpid())
        return response

    return mw


worker_header.sync_capable = True  # type: ignore[attr-defined]
worker_header.async_capable = True  # type: ignore[attr-defined]
