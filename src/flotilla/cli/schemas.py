"""Placeholder until the schemas sub-commands land."""
