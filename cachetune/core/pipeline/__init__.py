"""The `cachetune run` chain: prepare -> generate -> train -> evaluate -> register, from one config."""
