"""Built-in CLI commands, one module each with ``register(cli, pm)``."""
