"""The core: shared types, errors, hookspecs and the plugin manager, and one subpackage per stage.

data/ (prepare) -> generate/ -> train/ -> evaluate/; pipeline/ chains them (`cachetune run`),
serving/ loads trained adapters, cli/ is the click front end. See ARCHITECTURE.md.
"""
