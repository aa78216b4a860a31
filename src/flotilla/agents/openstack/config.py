"""The ``openstack:`` section of a site file.

```yaml
site: cloud-bologna
kind: openstack
openstack:
  cloud: infn-bologna            # a cloud of clouds.yaml
  clouds_file: /etc/flotilla/clouds.yaml   # else OS_CLIENT_CONFIG_FILE or the usual places
  region: RegionOne
  project: flotilla              # overrides the cloud's project
  network: private               # servers' default network
  external_network: public       # floating IPs come from here
  default_image: ubuntu-22.04    # for nodes that name no image
  images:                        # names Flotilla sees -> images of this site
    ubuntu-22.04: {image: Ubuntu 22.04 LTS, os_distribution: ubuntu, os_version: "22.04"}
```

Credentials stay in clouds.yaml (or its ``secure.yaml``); the site file only names the cloud.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

Text = Annotated[str, Field(min_length=1, max_length=255)]


class ImageEntry(BaseModel):
    """An image of the site offered under another name, with the OS it holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: Text = Field(description="Name or id of the site's image.")
    os_distribution: Text | None = Field(
        default=None, description="OS distribution reported for it (else the image's os_distro)."
    )
    os_version: Text | None = Field(
        default=None, description="OS version reported for it (else the image's os_version)."
    )
    gpu_driver: Text | None = Field(default=None, description="GPU driver installed in it, if any.")


class OpenStackSettings(BaseModel):
    """How the agent reaches its OpenStack project and what it uses there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cloud: Text = Field(description="Name of the cloud in clouds.yaml.")
    clouds_file: Path | None = Field(
        default=None,
        description="clouds.yaml to read; else OS_CLIENT_CONFIG_FILE or openstacksdk's defaults.",
    )
    region: Text | None = Field(default=None, description="Region; else the cloud's own.")
    project: Text | None = Field(
        default=None, description="Project name overriding the cloud's project."
    )
    network: Text = Field(description="Network servers join when a template names none.")
    external_network: Text | None = Field(
        default=None,
        description="External network floating IPs come from; needed for public addresses.",
    )
    default_image: Text | None = Field(
        default=None, description="Image (name or id) for virtual machines that ask for none."
    )
    images: dict[str, ImageEntry] = Field(
        default_factory=dict,
        description="Images offered under another name, e.g. a catalogue name -> site image.",
    )
    open_ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=lambda: [22],
        description="TCP ports every server's security group opens besides the node's own.",
    )
    call_timeout: timedelta = Field(
        default=timedelta(seconds=60),
        gt=timedelta(0),
        description="Bound on every single API call.",
    )
    build_timeout: timedelta = Field(
        default=timedelta(minutes=15),
        gt=timedelta(0),
        description="How long servers and volumes may take to become ready, or to go away.",
    )
    poll_interval: timedelta = Field(
        default=timedelta(seconds=2),
        gt=timedelta(0),
        description="Pause between two looks at resources that are still changing.",
    )
    workers: int = Field(
        default=4, ge=1, le=64, description="Threads running openstacksdk calls at once."
    )
    capacity_ttl: timedelta = Field(
        default=timedelta(seconds=30),
        ge=timedelta(0),
        description="How long a capacity snapshot is reused before the APIs are read again.",
    )
    rollback: bool = Field(
        default=True,
        description="Delete what a failed attempt created before reporting the failure.",
    )

    @field_validator("images", mode="before")
    @classmethod
    def _short_entries(cls, value: object) -> object:
        # ``alias: site-image`` is short for ``alias: {image: site-image}``.
        if isinstance(value, dict):
            return {k: {"image": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    def site_image(self, name: str) -> str:
        """The site image (name or id) behind a name Flotilla uses."""
        entry = self.images.get(name)
        return entry.image if entry is not None else name
