"""``cachetune serve``: an OpenAI-compatible embeddings server for the registry's adapters.

``POST /v1/embeddings`` (``input`` a string or a list of strings; ``model`` an adapter
``name[@version]``, a domain or the base model id; ``encoding_format`` ``float`` or
``base64``, little-endian float32 as OpenAI sends it), ``GET /v1/models``, ``GET /health``.
Vectors are unit length, so a cache's cosine and the adapter's calibrated threshold apply
as they are. Errors are OpenAI-shaped JSON (``{"error": {"message", "type", "param",
"code"}}``) with their HTTP status; a bad request, or a failed encode, never stops the server.
Built on Starlette and served by uvicorn (the ``serve`` extra).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import time
from typing import List, Optional

from cachetune.core.errors import CachetuneError
from cachetune.core.serving.batching import EncodeBatcher, QueueFull
from cachetune.core.serving.catalog import ModelCatalog

logger = logging.getLogger("cachetune.serve")
MAX_BODY_BYTES = 16 * 1024 * 1024


class ApiError(Exception):
    """An error answered as OpenAI does: status, message, type, param, code."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_response(error: ApiError):
    from starlette.responses import JSONResponse

    body = {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.code}}
    return JSONResponse(body, status_code=error.status)


async def _read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {int(declared)} bytes; the limit is {limit}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _texts(value) -> List[str]:
    if value is None:
        raise ApiError(422, "'input' is required: a string or a list of strings", param="input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    if isinstance(value, list) and not value:
        raise ApiError(422, "'input' is an empty list; send at least one text", param="input")
    if isinstance(value, list) and all(isinstance(item, (int, list)) for item in value):
        raise ApiError(422, "'input' holds token ids; this server embeds text: send strings", param="input")
    raise ApiError(422, "'input' must be a string or a list of strings", param="input")


def _embedding(row, encoding_format: str):
    if encoding_format == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.tolist()


def create_app(catalog: ModelCatalog, max_batch_size: int = 64, max_wait_ms: float = 0.0, max_queue: int = 1024,
               max_inputs: int = 2048, max_body_bytes: int = MAX_BODY_BYTES):
    """The Starlette app serving ``catalog``; ``app.state.batcher`` gathers the encodes."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    batcher = EncodeBatcher(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue)

    async def embeddings(request):
        body = await _read_body(request, max_body_bytes)
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "the request body must be a JSON object")
        name = payload.get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(422, "'model' is required: an adapter name[@version], a domain or the base model id",
                           param="model")
        texts = _texts(payload.get("input"))
        encoding_format = payload.get("encoding_format") or "float"
        if encoding_format not in ("float", "base64"):
            raise ApiError(422, f"'encoding_format' must be 'float' or 'base64', not {encoding_format!r}",
                           param="encoding_format")
        encoder = catalog.resolve(name)
        if encoder is None:
            raise ApiError(404, f"the model '{name}' is not served here (served: {', '.join(catalog.encoders)})",
                           param="model", code="model_not_found")
        dimensions = payload.get("dimensions")
        if dimensions is not None and dimensions != encoder.dimension:
            raise ApiError(422, f"'{encoder.id}' returns {encoder.dimension} dimensions; 'dimensions' cannot "
                                f"change that", param="dimensions")
        if len(texts) > max_inputs:
            raise ApiError(413, f"{len(texts)} inputs in one request; the limit is {max_inputs}", param="input",
                           code="too_many_inputs")
        counts = encoder.token_counts(texts)
        too_long = next((i for i, n in enumerate(counts) if n > encoder.max_tokens), None)
        if too_long is not None:
            raise ApiError(413, f"input {too_long} is {counts[too_long]} tokens; '{encoder.id}' takes at most "
                                f"{encoder.max_tokens}", param="input", code="input_too_long")
        try:
            vectors = await batcher.encode(encoder, texts)
        except QueueFull as exc:
            raise ApiError(503, f"the server is overloaded: {exc}; retry later", code="overloaded",
                           kind="server_error") from None
        except Exception as exc:  # the batcher has logged it; this request fails, the server goes on
            raise ApiError(500, f"encoding failed: {type(exc).__name__}: {exc}", kind="server_error") from None
        request.state.log = f"model={encoder.id} inputs={len(texts)} tokens={sum(counts)} format={encoding_format}"
        routed = getattr(vectors, "domains", None) is not None  # model "auto": the domain chosen per text
        rows = vectors.embeddings if routed else vectors
        data = [{"object": "embedding", "index": i, "embedding": _embedding(row, encoding_format),
                 **({"domain": vectors.domains[i], "threshold": vectors.thresholds[i]} if routed else {})}
                for i, row in enumerate(rows)]
        return JSONResponse({"object": "list", "data": data, "model": encoder.id,
                             "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}})

    async def models(request):
        return JSONResponse({"object": "list", "data": catalog.describe()})

    async def model(request):
        encoder = catalog.resolve(request.path_params["name"])
        if encoder is None:
            raise ApiError(404, f"the model '{request.path_params['name']}' is not served here", param="model",
                           code="model_not_found")
        return JSONResponse(encoder.describe())

    async def health(request):
        return JSONResponse({"status": "ok", "models": list(catalog.encoders), "queued": batcher.queued,
                             "batches": batcher.batches, "texts": batcher.texts})

    async def api_error(request, exc: ApiError):
        return error_response(exc)

    async def http_error(request, exc: HTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)), kind=kind))

    async def unexpected(request, exc: Exception):
        logger.exception("%s %s failed", request.method, request.url.path)
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    routes = [Route("/v1/embeddings", embeddings, methods=["POST"]), Route("/v1/models", models, methods=["GET"]),
              Route("/v1/models/{name:path}", model, methods=["GET"]), Route("/health", health, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: unexpected})
    app.state.batcher = batcher
    app.state.catalog = catalog
    return RequestLog(app)


class RequestLog:
    """ASGI middleware: one debug line per request (method, path, status, time, what was encoded)."""

    def __init__(self, app):
        self.app = app
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not logger.isEnabledFor(logging.DEBUG):
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [0]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            detail = scope.get("state", {}).get("log", "")
            logger.debug("%s %s %d %.1fms %s", scope["method"], scope["path"], status[0],
                         1000 * (time.perf_counter() - started), detail)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or one clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise CachetuneError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (--host/--port)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app, log_level: str = "info"):
    """A uvicorn server for ``app`` (``.run(sockets=[bind(...)])``; ``should_exit = True`` stops it)."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", timeout_keep_alive=30)
    return uvicorn.Server(config)
