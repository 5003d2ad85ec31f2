"""Runs ``cachetune serve``'s app in a thread on a free loopback port, for tests and benches."""

from __future__ import annotations

import contextlib
import threading
import time

HEALTH_TIMEOUT_S = 60.0


def wait_healthy(url: str, timeout_s: float = HEALTH_TIMEOUT_S, alive=lambda: True) -> None:
    """Poll ``url``/health until it answers 200; fail when ``alive()`` turns false or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server at {url} stopped before answering /health")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url}/health did not answer within {timeout_s:.0f} s")


@contextlib.contextmanager
def running_server(app, log_level: str = "warning"):
    """``with running_server(create_app(catalog)) as url:`` -> ``http://127.0.0.1:PORT``."""
    from cachetune.core.serving.server import bind, uvicorn_server

    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn_server(app, log_level=log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_healthy(url, alive=thread.is_alive)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
