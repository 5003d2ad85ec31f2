"""Serving trained adapters: load by domain or name, several adapters on one base model, merged exports."""
