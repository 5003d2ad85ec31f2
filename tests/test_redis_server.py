"""The Redis fixture: a real server with vector search, persistence off, gone after stop()."""

from __future__ import annotations

import pytest

from redis_server import RedisServer, RedisUnavailable, find_binaries


def test_server_has_vector_search_and_no_persistence(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    modules = {m[b"name"].decode().lower() for m in client.module_list()}
    assert {"search", "rejson"} <= modules
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert client.info("server")["redis_version"].startswith("8.")
    client.execute_command("FT.CREATE", "idx", "ON", "HASH", "PREFIX", "1", "doc:", "SCHEMA",
                           "v", "VECTOR", "FLAT", "6", "TYPE", "FLOAT32", "DIM", "2", "DISTANCE_METRIC", "COSINE")
    assert client.execute_command("FT._LIST") == [b"idx"]


def test_stop_ends_the_process_and_removes_its_folder():
    import redis

    try:
        find_binaries()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    server = RedisServer().start()
    folder, url = server._dir, server.url
    assert redis.Redis.from_url(url).ping()
    server.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    import os

    assert not os.path.exists(folder)


def test_a_server_that_cannot_start_says_why(monkeypatch, tmp_path):
    import redis_server

    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: cannot load module' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(redis_server, "find_binaries", lambda: (str(fake), []))
    with pytest.raises(RedisUnavailable, match="redis-server did not start: FATAL: cannot load module"):
        RedisServer(timeout_s=5).start()
