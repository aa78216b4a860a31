"""The site file's openstack section: validated, with errors naming the field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from flotilla.agents.config import AgentConfig, load_agent_config
from flotilla.agents.openstack import ImageEntry, OpenStackDriver, create_driver
from flotilla.agents.registry import create_driver as registry_create_driver
from flotilla.errors import ConfigurationError
from flotilla.schemas import SiteKind


def _config(section: dict[str, object]) -> AgentConfig:
    return AgentConfig.model_validate(
        {"site": "cloud-a", "kind": "openstack", "openstack": section}
    )


def test_registry_builds_the_openstack_driver_from_the_site_file() -> None:
    """kind: openstack selects this driver, configured from the openstack section."""
    driver = registry_create_driver(
        _config(
            {
                "cloud": "testbed-admin",
                "network": "private",
                "poll_interval": "PT0.5S",
                "images": {
                    "ubuntu-16.04": "cirros-fake",
                    "centos-7": {"image": "c7", "os_version": "7"},
                },
            }
        )
    )
    assert isinstance(driver, OpenStackDriver)
    assert driver.kind is SiteKind.OPENSTACK
    settings = driver.settings
    assert settings.poll_interval == timedelta(seconds=0.5)
    assert settings.images["ubuntu-16.04"] == ImageEntry(image="cirros-fake")
    assert settings.site_image("centos-7") == "c7"
    assert settings.site_image("other") == "other"
    assert settings.open_ports == [22]


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"network": "private"}, "openstack: cloud: Field required"),
        (
            {"cloud": "c", "network": "private", "password": "x"},
            "openstack: password: Extra inputs",
        ),
        ({"cloud": "c", "network": "private", "workers": 0}, "openstack: workers:"),
    ],
)
def test_wrong_fields_are_named(section: dict[str, object], field: str) -> None:
    """A missing, unknown or out-of-range field is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError) as raised:
        create_driver(_config(section))
    assert field in str(raised.value)


def test_the_example_site_file_loads() -> None:
    """examples/openstack-site.yaml is a valid site file for this driver."""
    path = Path(__file__).parents[3] / "examples" / "openstack-site.yaml"
    driver = registry_create_driver(load_agent_config(path))
    assert isinstance(driver, OpenStackDriver)
    assert driver.settings.external_network == "public"
    assert driver.settings.site_image("ubuntu-16.04") == "cirros-fake"
