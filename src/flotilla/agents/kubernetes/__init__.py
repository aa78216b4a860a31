"""Flotilla agents.kubernetes."""
