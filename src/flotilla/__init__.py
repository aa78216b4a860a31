"""Flotilla: an event-driven orchestrator for federated research infrastructure."""

__version__ = "0.1.0"
