"""Every template of the INDIGO TOSCA corpus parses offline into sensible requirements."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flotilla.scheduler.tosca import TemplateParser, TemplateRequirements, Topology
from flotilla.schemas import WorkloadKind


def _corpus() -> Path:
    beside_checkout = Path(__file__).parents[3] / "shared" / "tosca-corpus"
    return Path(os.environ.get("FLOTILLA_TOSCA_CORPUS", beside_checkout))


CORPUS = _corpus()
TEMPLATES = sorted(
    p for p in (CORPUS / "templates").rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
)
TEXTS = {path: path.read_text(encoding="utf-8") for path in TEMPLATES}


def test_the_corpus_is_there() -> None:
    """The corpus (shared/ beside the checkout, or FLOTILLA_TOSCA_CORPUS) has templates."""
    assert len(TEMPLATES) >= 16, f"expected the TOSCA corpus at {CORPUS}"


_DUMMY = {"integer": "1", "float": "1.0", "boolean": "true", "scalar-unit.size": "1 GB"}


@pytest.fixture(scope="module")
def parser() -> Iterator[TemplateParser]:
    """One worker process for the whole module."""
    instance = TemplateParser()
    yield instance
    instance.close()


def _required_inputs(topology: Topology) -> dict[str, Any]:
    # Inputs the author left to the user (required, no default) get a value of their type.
    return {
        spec.name: _DUMMY.get(spec.type, "x")
        for spec in topology.inputs
        if spec.required and spec.default is None
    }


async def _requirements(parser: TemplateParser, path: Path) -> TemplateRequirements:
    text = TEXTS[path]
    return await parser.requirements(text, _required_inputs(await parser.parse(text)))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
async def test_corpus_template_is_accepted(parser: TemplateParser, path: Path) -> None:
    """Each corpus template yields at least one node, each with a known workload kind."""
    requirements = await _requirements(parser, path)

    assert requirements.nodes
    assert all(isinstance(node.kind, WorkloadKind) for node in requirements.nodes)
    for node in requirements.nodes:
        if node.kind is WorkloadKind.SOFTWARE_COMPONENT and node.host is not None:
            assert requirements.node(node.host) is not None


def _template(name: str) -> Path:
    return next(p for p in TEMPLATES if p.name == name)


async def test_single_node_is_one_virtual_machine(parser: TemplateParser) -> None:
    """simple-node.yml is one VM with the default CPUs, memory and OS of its inputs."""
    requirements = await _requirements(parser, _template("simple-node.yml"))

    (node,) = requirements.nodes
    assert node.kind is WorkloadKind.VIRTUAL_MACHINE
    assert (node.resources.cpus, node.resources.memory_mb, node.count) == (1, 2000, 1)
    assert node.image is not None
    assert (node.image.distribution, node.image.version) == ("ubuntu", "16.04")
    assert node.public_address


async def test_two_site_template_has_volume_and_sla_placements(parser: TemplateParser) -> None:
    """The across-clouds example attaches its volume and pins each tier to an SLA."""
    requirements = await _requirements(parser, _template("web_mysql_tosca_across_clouds.yaml"))

    volume = requirements.node("my_block_storage")
    assert volume is not None
    assert volume.kind is WorkloadKind.VOLUME
    assert volume.attached_to == "db_server"
    db = requirements.node("db_server")
    assert db is not None
    assert (db.resources.memory_mb, db.resources.disk_gb) == (4000, 10)
    assert [(v.node, v.location) for v in db.volumes] == [("my_block_storage", "/mnt/disk")]
    slas = {p.targets: p.sla_id for p in requirements.placements}
    assert slas == {
        ("db_server",): "4401ac5dc8cfbbb737b0a02575ee53f6",
        ("web_server",): "7efc59c5db69ea67c5100de0f752b3de",
    }


async def test_marathon_app_takes_resources_from_its_runtime(parser: TemplateParser) -> None:
    """The DEEP GPU app is a container application with its runtime's GPUs and ports."""
    requirements = await _requirements(parser, _template("deep-oc-mods_mesos-gpu.yml"))

    app = requirements.node("marathon")
    assert app is not None
    assert app.kind is WorkloadKind.CONTAINER_APPLICATION
    assert app.container_image == "deephdc/deep-oc-mods:gpu"
    assert app.resources.memory_mb == 4096
    assert [port.port for port in app.ports] == [5000, 6006, 8888]


async def test_qcg_job_is_a_batch_job(parser: TemplateParser) -> None:
    """INDIGO's Qcg.Job maps onto a batch job with its cores, memory, queue and wall clock."""
    requirements = await _requirements(parser, _template("qcg-job.yaml"))

    (job,) = requirements.nodes
    assert job.kind is WorkloadKind.BATCH_JOB
    assert (job.resources.cpus, job.resources.memory_mb) == (2, 1024)
    assert job.properties["partition"] == "standard"
    assert job.properties["wall_time_seconds"] == 120


async def test_elastic_cluster_hosts_software_through_lrms(parser: TemplateParser) -> None:
    """Software hosted through INDIGO's lrms requirement is accepted and knows its host."""
    requirements = await _requirements(parser, _template("elastic_cluster.yaml"))

    cluster = requirements.node("elastic_cluster_front_end")
    assert cluster is not None
    assert cluster.host == "lrms_front_end"
    workers = requirements.node("lrms_wn")
    assert workers is not None
    assert workers.count == 0


async def test_availability_zone_placement_without_sla(parser: TemplateParser) -> None:
    """An SlaPlacement with only an availability zone is manual scheduling, not an error."""
    requirements = await _requirements(parser, _template("node_with_availability_zone.yaml"))

    (placement,) = requirements.placements
    assert (placement.sla_id, placement.availability_zone) == (None, "some_zone")


async def test_wide_port_range_stays_a_range(parser: TemplateParser) -> None:
    """HTCondor's 31024-32048 shared ports are one range, not a thousand ports."""
    requirements = await _requirements(parser, _template("htcondor_cluster.yaml"))

    spans = [(s.first, s.last) for n in requirements.nodes for s in n.port_ranges]
    assert (31024, 32048) in spans
