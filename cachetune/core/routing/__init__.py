"""Routing queries to their domain's adapter: router.py (the router, routed encode), train.py (fit, evaluate)."""
