"""Turn a template's requirements and a chosen site into the site-specific plan it executes."""

from __future__ import annotations

from typing import Any

from flotilla.scheduler.placement import Candidate
from flotilla.scheduler.tosca.requirement import (
    NodeRequirements,
    TemplateRequirements,
    jsonable,
)
from flotilla.schemas import PlannedNode, SitePlan


def site_plan(requirements: TemplateRequirements, candidate: Candidate, group: str) -> SitePlan:
    """The plan for one site: every node with the flavor and image chosen for that site."""
    return SitePlan(
        nodes=[_planned(node, candidate) for node in requirements.nodes],
        outputs=jsonable(requirements.outputs),
        group=group,
    )


def _planned(node: NodeRequirements, candidate: Candidate) -> PlannedNode:
    properties: dict[str, Any] = jsonable(node.properties)
    if node.container_image:
        properties.setdefault("container_image", node.container_image)
    if node.host:
        properties.setdefault("host", node.host)
    image = candidate.images.get(node.name) or (node.image.name if node.image else None)
    return PlannedNode(
        name=node.name,
        kind=node.kind,
        count=node.count,
        resources=node.resources,
        shape=candidate.shapes.get(node.name),
        image=image,
        ports=list(node.ports),
        public_address=node.public_address,
        depends_on=list(node.depends_on),
        attached_to=node.attached_to,
        properties=properties,
    )
