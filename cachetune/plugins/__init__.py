"""Built-in plugins that serve every domain: the LLM generator backends."""
