"""The OpenStack site driver (openstacksdk): virtual machines, volumes and networks of one project.

``create_driver(config)`` is what the agent registry calls for ``kind: openstack``; the
site file's ``openstack:`` section is ``OpenStackSettings``.
"""

from flotilla.agents.openstack.config import ImageEntry, OpenStackSettings
from flotilla.agents.openstack.driver import OpenStackDriver, create_driver

__all__ = ["ImageEntry", "OpenStackDriver", "OpenStackSettings", "create_driver"]
