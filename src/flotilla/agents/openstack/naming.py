"""How resources of one attempt are named, tagged and recognised again.

Every resource carries the attempt tag (``attempt_tag(deployment, attempt)``) in the place
its service offers: a server tag and metadata (nova), volume metadata (cinder), tags and
the description (neutron, because neutron refuses tags when creating and a crash between
the create and the tagging must not hide the resource). Names start with the tag, so that
keypairs (which have nothing else) are found too, and name the node and the instance.
"""

from __future__ import annotations

from dataclasses import dataclass

from flotilla.agents.driver import attempt_tag

DEPLOYMENT_KEY = "flotilla_deployment"
ATTEMPT_KEY = "flotilla_attempt"
NODE_KEY = "flotilla_node"
INDEX_KEY = "flotilla_index"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptNames:
    """The names and tags of one attempt's resources."""

    deployment_id: str
    attempt: int

    @property
    def tag(self) -> str:
        """The tag every resource of the attempt carries."""
        return attempt_tag(self.deployment_id, self.attempt)

    @property
    def deployment_tag(self) -> str:
        """A second tag shared by every attempt of the deployment."""
        return f"flotilla-{self.deployment_id}"

    @property
    def tags(self) -> list[str]:
        """Both tags, attempt first."""
        return [self.tag, self.deployment_tag]

    @property
    def prefix(self) -> str:
        """What every resource name of the attempt starts with."""
        return f"{self.tag}-"

    def server(self, node: str, index: int) -> str:
        """The server of instance ``index`` of a compute node."""
        return f"{self.tag}-{node}-{index}"

    def volume(self, node: str, index: int) -> str:
        """Volume ``index`` of a block-storage node."""
        return f"{self.tag}-{node}-{index}"

    def security_group(self, node: str) -> str:
        """The security group of a compute node (all its instances)."""
        return f"{self.tag}-{node}"

    def keypair(self, node: str) -> str:
        """The keypair holding a compute node's public key."""
        return f"{self.tag}-{node}"

    def network(self, node: str) -> str:
        """A network the template defines."""
        return f"{self.tag}-{node}"

    def metadata(self, node: str, index: int | None = None) -> dict[str, str]:
        """Nova and cinder metadata naming the attempt, the node and the instance."""
        found = {
            DEPLOYMENT_KEY: self.deployment_id,
            ATTEMPT_KEY: self.tag,
            NODE_KEY: node,
        }
        if index is not None:
            found[INDEX_KEY] = str(index)
        return found

    def owns(self, name: str | None) -> bool:
        """Whether a resource name belongs to this attempt.

        ``flotilla-<id>-1-`` is not a prefix of ``flotilla-<id>-10-...``: attempts never clash.
        """
        return bool(name) and str(name).startswith(self.prefix)


def instance_of(metadata: dict[str, str] | None) -> tuple[str, int] | None:
    """The (node, index) a server or volume was created for, from its metadata."""
    if not metadata or NODE_KEY not in metadata:
        return None
    try:
        return metadata[NODE_KEY], int(metadata.get(INDEX_KEY, "0"))
    except ValueError:
        return None
