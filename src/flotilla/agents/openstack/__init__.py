"""Flotilla agents.openstack."""
