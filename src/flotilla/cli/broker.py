"""Placeholder until the broker sub-commands land."""
