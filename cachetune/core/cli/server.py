"""``cachetune serve``: the registry's adapters behind an OpenAI-compatible embeddings endpoint."""

from __future__ import annotations

import logging

import click

from cachetune.core.cli.adapters import registry_option
from cachetune.core.cli.serve import backend_options
from cachetune.core.errors import CachetuneError


def _need_serve_extra() -> None:
    missing = []
    for module in ("starlette", "uvicorn"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise CachetuneError(f"`cachetune serve` needs {' and '.join(missing)}: pip install 'cachetune[serve]'")


def register(cli, pm) -> None:
    @cli.command()
    @registry_option
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
    @click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
                  help="Port to listen on (0: a free one, printed at start).")
    @click.option("--model", "models", multiple=True, metavar="NAME[@VERSION]",
                  help="Adapter to serve (repeatable; a domain serves its adapter). Default: every adapter "
                       "in the registry. The base model is always served too.")
    @click.option("--merged", is_flag=True,
                  help="Merge each LoRA into its own copy of the base (faster encodes, one copy per adapter).")
    @click.option("--router", "router", metavar="NAME[@VERSION]",
                  help="Serve this router as model 'auto' (default: the registry's router over the most "
                       "loaded domains, if one fits the adapters served).")
    @backend_options
    @click.option("--device", help="torch device (default: sentence-transformers' choice).")
    @click.option("--max-batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                  help="Most texts encoded in one call; concurrent requests share it.")
    @click.option("--max-wait-ms", type=click.FloatRange(min=0), default=10.0, show_default=True,
                  help="Hold a batch up to this long until as many requests are queued as were outstanding "
                       "when the last batch was answered (0: batch whatever queued while the previous "
                       "encode ran; a lone client never waits).")
    @click.option("--max-queue", type=click.IntRange(min=1), default=1024, show_default=True,
                  help="Requests waiting beyond this are answered 503.")
    @click.option("--max-inputs", type=click.IntRange(min=1), default=2048, show_default=True,
                  help="Most texts in one request (more: 413).")
    @click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
                  show_default=True, help="debug logs one line per request.")
    def serve(registry, host, port, models, merged, router, backend, quantize, device, max_batch_size, max_wait_ms,
              max_queue, max_inputs, log_level):
        """Serve adapters as OpenAI-compatible embeddings: POST /v1/embeddings, GET /v1/models, GET /health."""
        _need_serve_extra()
        if quantize and backend != "onnx":
            raise click.UsageError("--quantize needs --backend onnx")
        from cachetune.core.serving.catalog import load_catalog
        from cachetune.core.serving.server import bind, create_app, uvicorn_server

        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("cachetune.serve").setLevel(log_level.upper())
        sock = bind(host, port)  # before loading models: a busy port fails fast
        catalog = load_catalog(registry, models, merged=merged, device=device, batch_size=max_batch_size,
                               router=router, backend=backend, quantize=quantize)
        app = create_app(catalog, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                         max_inputs=max_inputs)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        click.echo(f"serving {', '.join(catalog.encoders)} at http://{shown}:{bound_port}/v1", err=True)
        uvicorn_server(app, log_level=log_level).run(sockets=[sock])
