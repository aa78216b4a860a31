"""Flotilla agents."""
