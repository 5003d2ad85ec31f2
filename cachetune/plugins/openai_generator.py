"""The ``openai`` generator backend: any OpenAI-compatible chat-completions server.

Works with ``vllm serve``, the llama.cpp servers, SGLang, Ollama and OpenAI itself. Requests
of a batch go out concurrently (at most ``concurrency`` in flight, default 8) over one
``httpx`` client, and each reply is handed over as it arrives (``generate_each``), so a query's
triplets are written as soon as both its replies are in; a 429, a 5xx, a timeout or a dropped connection is retried with exponential
backoff and jitter (``Retry-After`` is honoured), and when the retries run out the run stops
with one line -- the triplets already written stay and a rerun resumes. Any other 4xx fails
only that request (counted as ``request_failed``).

``model`` defaults to the first model the server lists, which is what a single-model server
such as llama.cpp or ``vllm serve`` hosts; the options it declares are in :data:`OPTIONS`. With
``json_schema`` a server that rejects the OpenAI form of the schema is asked with llama.cpp's
form, then with none -- the first that works is kept for the run.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Iterator, List, Optional, Sequence, Tuple

from cachetune import BackendOption, hookimpl
from cachetune.core.errors import CachetuneError
from cachetune.core.generate.backends import backend_options
from cachetune.core.generate.prompting import GenerationResult, Request

NAME = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0

OPTIONS = (
    BackendOption("base_url", str, None, "server URL ending in /v1 (default $OPENAI_BASE_URL, else OpenAI's)."),
    BackendOption("api_key", str, None, "API key (default $OPENAI_API_KEY)."),
    BackendOption("concurrency", int, 8, "requests in flight."),
    BackendOption("timeout", float, 120.0, "seconds per HTTP request."),
    BackendOption("max_retries", int, 5, "retries of a 429, 5xx, timeout or dropped connection."),
    BackendOption("retry_backoff", float, 0.5, "first wait before a retry, seconds (doubles each time)."),
    BackendOption("json_schema", bool, True, "ask for replies that follow the JSON schema."),
)


class RetriesExhausted(Exception):
    pass


class OpenAIGenerator:
    """Chat completions over HTTP with bounded concurrency and retries."""

    def __init__(self, options: dict):
        opts = backend_options(options, OPTIONS)
        self.base_url = (opts["base_url"] or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = opts["api_key"] or os.environ.get("OPENAI_API_KEY") or "none"
        self.model: Optional[str] = opts["model"]
        self.concurrency = max(1, int(opts["concurrency"]))
        self.timeout = float(opts["timeout"])
        self.max_retries = max(0, int(opts["max_retries"]))
        self.backoff = float(opts["retry_backoff"])
        self.temperature = float(opts["temperature"])
        self.max_tokens = int(opts["max_tokens"])
        # Response formats to try, best first: OpenAI/vLLM/SGLang take "json_schema", the
        # llama-cpp-python server takes "json_object" with a "schema"; the last is no format.
        self._formats: List[Optional[str]] = (["json_schema", "json_object", None] if opts["json_schema"] else [None])
        self.retries = 0  # retried requests, for the tests and the summary
        self._lock = threading.Lock()
        self._client = None
        self._pool: Optional[ThreadPoolExecutor] = None
        # Big enough that the pool rarely drains between batches (2 requests per query).
        self.batch_size = max(32, 2 * self.concurrency)

    # -- HTTP -----------------------------------------------------------------------------
    def _http(self):
        if self._client is None:
            try:
                import httpx
            except ImportError:
                raise CachetuneError("the openai backend needs httpx: pip install 'cachetune[openai]'") from None
            self._client = httpx.Client(
                base_url=self.base_url, timeout=self.timeout,
                headers={"Authorization": f"Bearer {self.api_key}"},
                limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            )
        return self._client

    def _wait(self, attempt: int, retry_after: Optional[str]) -> None:
        delay = self.backoff * (2 ** attempt) * (0.5 + random.random())
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:  # an HTTP date: not worth parsing, keep the backoff
                pass
        time.sleep(min(delay, MAX_BACKOFF_S))

    def _call(self, method: str, path: str, body: Optional[dict] = None, final=None):
        """One HTTP call with retries; returns the response for any non-retryable status, and
        for any response ``final(response)`` says not to retry."""
        import httpx

        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http().request(method, path, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                retry_after = None
            else:
                if response.status_code not in RETRY_STATUS or (final is not None and final(response)):
                    return response
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                retry_after = response.headers.get("retry-after")
            if attempt < self.max_retries:
                with self._lock:
                    self.retries += 1
                self._wait(attempt, retry_after)
        raise RetriesExhausted(f"{method} {self.base_url}{path} failed after {self.max_retries} retries: {last}")

    def _resolve_model(self) -> None:
        if self.model:
            return
        try:
            response = self._call("GET", "/models")
        except RetriesExhausted as exc:
            raise CachetuneError(f"openai backend: {exc}") from None
        try:
            self.model = response.json()["data"][0]["id"]
        except Exception:
            raise CachetuneError(f"openai backend: no --model given and {self.base_url}/models lists none "
                                 f"(HTTP {response.status_code})") from None

    @property
    def label(self) -> str:
        """``openai:<model>``; without --model, asking the server which model it serves."""
        self._resolve_model()
        return f"{NAME}:{self.model}"

    # -- requests ---------------------------------------------------------------------------
    @property
    def response_format(self) -> Optional[str]:
        return self._formats[0]

    def _body(self, request: Request, fmt: Optional[str]) -> dict:
        body = {"model": self.model, "messages": request.conversation, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "seed": request.seed, "n": 1}
        if fmt == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": request.kind, "schema": request.schema, "strict": True}}
        elif fmt == "json_object":
            body["response_format"] = {"type": "json_object", "schema": request.schema}
        return body

    def _answer(self, request: Request) -> GenerationResult:
        while True:
            fmt = self._formats[0]
            response = self._call("POST", "/chat/completions", self._body(request, fmt), final=_refuses_format)
            if fmt is None or not _refuses_format(response):
                break
            with self._lock:  # this server does not take this format: fall back, once per run
                if self._formats[0] == fmt and len(self._formats) > 1:
                    self._formats.pop(0)
        if response.status_code != 200:
            return GenerationResult(None, error=f"request_failed: HTTP {response.status_code}: {response.text[:200]}")
        try:
            data = response.json()
            text = data["choices"][0]["message"].get("content")
        except Exception as exc:
            return GenerationResult(None, error=f"request_failed: malformed reply ({exc!r})")
        usage = data.get("usage") or {}
        return GenerationResult(text, usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)

    def generate_each(self, requests: Sequence[Request]) -> Iterator[Tuple[int, GenerationResult]]:
        """``(index, result)`` for each request as its reply arrives (see ``Generator``)."""
        self._resolve_model()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="cachetune-openai")
        futures = {self._pool.submit(self._answer, request): index for index, request in enumerate(requests)}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except RetriesExhausted as exc:
            raise CachetuneError(f"openai backend: {exc}") from None
        finally:  # Ctrl-C, an error, or a caller that stopped reading: do not start what is still queued
            for future in futures:
                future.cancel()

    def generate(self, requests: Sequence[Request]) -> List[GenerationResult]:
        results: List[Optional[GenerationResult]] = [None] * len(requests)
        for index, result in self.generate_each(requests):
            results[index] = result
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None


def _refuses_format(response) -> bool:
    """The server refused the ``response_format`` (400/422; llama-cpp-python's server says 500)."""
    return response.status_code in (400, 422, 500) and "response_format" in response.text


def create(options: dict) -> OpenAIGenerator:
    return OpenAIGenerator(options)


# tryfirst: a built-in keeps its names unless a plugin's hook is tryfirst too (core/plugin_manager.py)
@hookimpl(tryfirst=True)
def register_generators(register):
    register(NAME, create, OPTIONS)
