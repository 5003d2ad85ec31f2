"""Built-in domain plugins, one package each, registered exactly as a third-party domain is."""
