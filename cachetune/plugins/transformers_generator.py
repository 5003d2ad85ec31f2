"""Generator backend plugin (see the generation issue)."""
