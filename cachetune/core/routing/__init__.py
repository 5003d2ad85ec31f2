"""Routing queries to their domain's adapter: router.py (the router, routed encode), train.py (fit,
evaluate). Loading a router onto models is core/serving/routed.py."""
