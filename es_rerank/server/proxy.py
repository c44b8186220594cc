"""The passthrough: every request es-rerank does not answer itself goes to the cluster unchanged.

Method, raw path and query string, headers (the caller's ``Authorization`` included; none
added) and body go to the cluster as they came; its status, headers (``X-Elastic-Product``
included) and body come back as they are, streamed both ways: a large ``_bulk`` is never held
in memory. Only hop-by-hop headers (``Connection``, ``Transfer-Encoding`` ...) are left to
each connection, as HTTP requires of a proxy. A body that stops arriving for
``serve_body_timeout`` seconds is answered 408 (:func:`body_chunks`), streamed or not: a
stalled client never holds a connection to the cluster open.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import AsyncIterator

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..config import Settings
from .errors import ApiError
from .pipeline import without_credentials

logger = logging.getLogger(__name__)

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
_REQUEST_DROP = HOP_BY_HOP | {"host", "expect"}


def body_timeout(timeout: float, received: int) -> ApiError:
    """The 408 for a request body that stopped arriving (the connection is closed after it)."""
    return ApiError(408, "es_rerank_body_timeout_exception",
                    f"the request body stopped arriving: no bytes for {timeout:g}s after {received} bytes "
                    "(ES_RERANK_SERVE_BODY_TIMEOUT)", headers={"Connection": "close"})


async def body_chunks(request: Request, timeout: float) -> AsyncIterator[bytes]:
    """The request body as it arrives, each wait for its next bytes bounded by ``timeout``
    seconds (as nginx's ``client_body_timeout``: a body may be long, never stalled).

    Raises:
        ApiError: 408 (:func:`body_timeout`) when no bytes arrive for ``timeout`` seconds.
    """
    stream = request.stream().__aiter__()
    received = 0
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise body_timeout(timeout, received) from None
        received += len(chunk)
        yield chunk


class Passthrough:
    """Forwards requests to the cluster at ``settings.url`` (credentials in the URL are dropped).

    Args:
        settings: ``url``, TLS settings, ``request_timeout`` (the longest wait for the
            cluster's next bytes) and ``serve_body_timeout`` (the longest wait for the
            caller's) are used.
    """

    def __init__(self, settings: Settings):
        clean = without_credentials(settings)
        self.base = clean.url.rstrip("/")
        self.safe_url = clean.safe_url
        self.timeout = httpx.Timeout(settings.request_timeout, connect=min(5.0, settings.request_timeout))
        self.body_timeout = settings.serve_body_timeout
        if not self.base.startswith("https"):
            self.verify: ssl.SSLContext | bool = True
        elif not settings.verify_certs:
            self.verify = False
        else:
            self.verify = ssl.create_default_context(cafile=settings.ca_certs)
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            client = httpx.AsyncClient(timeout=self.timeout, verify=self.verify, trust_env=False,
                                       follow_redirects=False,
                                       limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
            for name in ("accept", "accept-encoding", "user-agent"):  # the caller's own, or none
                if name in client.headers:
                    del client.headers[name]
            self._client = client
        return self._client

    async def close(self) -> None:
        """Close the connections to the cluster."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def url_for(self, request: Request) -> str:
        """The cluster URL of a request: raw (still percent-encoded) path and query string."""
        raw_path = request.scope.get("raw_path") or request.url.path.encode("utf-8")
        url = self.base + raw_path.decode("latin-1")
        query = request.scope.get("query_string") or b""
        return url + ("?" + query.decode("latin-1") if query else "")

    async def send(self, method: str, url: str, headers: list[tuple[bytes, bytes]],
                   content: bytes | AsyncIterator[bytes] | None) -> httpx.Response:
        """Send one request to the cluster and return its streaming response.

        Raises:
            ApiError: 504 when the cluster does not answer in time, 502 when it cannot be reached.
        """
        client = self._http()
        req = client.build_request(method, url, headers=headers, content=content)
        try:
            return await client.send(req, stream=True)
        except httpx.TimeoutException as e:
            raise ApiError(504, "es_rerank_cluster_timeout_exception",
                           f"the cluster at {self.safe_url} did not answer within {self.timeout.read:g}s "
                           f"(ES_REQUEST_TIMEOUT): {type(e).__name__}") from None
        except httpx.TransportError as e:
            raise ApiError(502, "es_rerank_cluster_unreachable_exception",
                           f"cannot reach the cluster at {self.safe_url}: {type(e).__name__}") from None

    async def forward(self, request: Request, body: bytes | None = None) -> Response:
        """Forward ``request`` (its body already read into ``body``, or streamed) and stream the answer back.

        Raises:
            ApiError: 502/504 when the cluster cannot be reached or does not answer in time; 408
                when the caller's body stops arriving.
        """
        return await self.relay(request, await self.open(request, body))

    async def open(self, request: Request, body: bytes | None = None) -> httpx.Response:
        """Send ``request`` on to the cluster; its streaming answer, for :meth:`relay` or the caller to close.

        Raises:
            ApiError: 502/504 when the cluster cannot be reached or does not answer in time.
        """
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in _REQUEST_DROP]
        if body is not None:
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            content: bytes | AsyncIterator[bytes] | None = body
        elif request.method in ("GET", "HEAD", "DELETE", "OPTIONS") and "content-length" not in request.headers \
                and "transfer-encoding" not in request.headers:
            content = None
        else:
            content = body_chunks(request, self.body_timeout)
        return await self.send(request.method, self.url_for(request), headers, content)

    async def relay(self, request: Request, upstream: httpx.Response) -> Response:
        """The cluster's answer, streamed back with its status and headers (hop-by-hop ones left out)."""
        raw_headers = [(k, v) for k, v in upstream.headers.raw if k.decode("latin-1").lower() not in HOP_BY_HOP]
        if request.method == "HEAD" or upstream.status_code in (204, 304):
            await upstream.aclose()
            response = Response(status_code=upstream.status_code)
        else:
            response = StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code,
                                         background=BackgroundTask(upstream.aclose))
        response.raw_headers = raw_headers
        return response
