"""Bad templates and inputs fail with problems that name the node and the field."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from flotilla.errors import PermanentError
from flotilla.scheduler.tosca import TemplateError, TemplateRequirements, derive
from flotilla.scheduler.tosca.worker import parse_text
from flotilla.schemas import WorkloadKind

CASES = Path(__file__).parent / "tosca_cases"


def _check(name: str, inputs: dict[str, Any] | None = None) -> TemplateRequirements:
    # In-process on purpose: these are pure checks; the worker process is tested elsewhere.
    return derive(parse_text((CASES / name).read_text(encoding="utf-8")), inputs or {})


def _problems(name: str, inputs: dict[str, Any] | None = None) -> set[tuple[str | None, str]]:
    with pytest.raises(TemplateError) as caught:
        _check(name, inputs)
    assert isinstance(caught.value, PermanentError)
    return {(p.node, p.field) for p in caught.value.problems}


def test_unknown_node_type_names_node_and_type() -> None:
    """A node of a type the library does not have is reported on its type field."""
    assert _problems("unknown_type.yaml") == {("mystery", "type")}


def test_missing_required_input_is_named() -> None:
    """A required input without default and without value is reported as inputs.<name>."""
    assert _problems("required_input.yaml") == {(None, "inputs.admin_token")}


def test_input_of_wrong_type_is_named() -> None:
    """An integer input given text that is not a number is reported with its name."""
    problems = _problems("required_input.yaml", {"admin_token": "t", "num_cpus": "four"})
    assert problems == {(None, "inputs.num_cpus")}


def test_undeclared_input_is_named() -> None:
    """An input the template does not declare is rejected rather than silently ignored."""
    problems = _problems("required_input.yaml", {"admin_token": "t", "num_cpu": 2})
    assert problems == {(None, "inputs.num_cpu")}


def test_negative_cpus_from_input_is_unsatisfiable() -> None:
    """Negative CPUs reaching a node through an input are reported on that node's field."""
    assert _problems("negative_cpus.yaml", {"cpus": "-1"}) == {("web", "cpus")}


def test_negative_literal_cpus_names_node(tmp_path: Path) -> None:
    """A literal out-of-range value rejected by tosca-parser still names node and field."""
    text = (CASES / "unknown_type.yaml").read_text(encoding="utf-8")
    text = text.replace(
        "type: tosca.nodes.Compute",
        "type: tosca.nodes.Compute\n      capabilities:\n        host:\n"
        "          properties:\n            num_cpus: -2",
    ).replace("tosca.nodes.indigo.DoesNotExist", "tosca.nodes.Compute")
    with pytest.raises(TemplateError) as caught:
        parse_text(text)
    assert {(p.node, p.field) for p in caught.value.problems} == {("server", "num_cpus")}


def test_unknown_imports_fail_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote or file import not in the library is an error naming it; nothing connects."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the parser tried to use the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(TemplateError) as caught:
        _check("remote_import.yaml")

    messages = {p.field: p.message for p in caught.value.problems}
    assert set(messages) == {"imports[0]", "imports[1]"}
    assert "https://types.example.org/steal-my-scheduler.yaml" in messages["imports[0]"]
    assert "../../../etc/passwd" in messages["imports[1]"]


def test_not_yaml_and_not_tosca_are_errors() -> None:
    """Text that is not YAML, or YAML that is not TOSCA, fails with a located problem."""
    with pytest.raises(TemplateError) as not_yaml:
        parse_text("a: [unclosed\n")
    with pytest.raises(TemplateError) as not_tosca:
        parse_text("just: a mapping\n")
    assert not_yaml.value.problems[0].field.startswith("line ")
    assert not_tosca.value.problems[0].field == "tosca_definitions_version"


def test_indigo_conventions_are_tolerated() -> None:
    """Indexed outputs, string inputs with numeric defaults and SlaPlacement region parse."""
    requirements = _check("indigo_conventions.yaml")

    (server,) = requirements.nodes
    assert server.kind is WorkloadKind.VIRTUAL_MACHINE
    assert requirements.outputs["first_user"] == "alice"
    (placement,) = requirements.placements
    assert (placement.sla_id, placement.region, placement.targets) == (
        "sla-42",
        "bari",
        ("server",),
    )
    assert any("region" in warning for warning in requirements.warnings)


def test_compute_hardware_requirements() -> None:
    """CPUs, memory, disk, GPUs, InfiniBand, OS and ports come from the capabilities."""
    (server,) = _check("indigo_conventions.yaml", {"gpus": "2"}).nodes

    resources = server.resources
    assert (resources.cpus, resources.memory_mb, resources.disk_gb) == (4, 8590, 40)
    assert resources.gpu is not None
    assert (resources.gpu.count, resources.gpu.vendor, resources.gpu.model) == (2, "NVIDIA", "A100")
    assert resources.infiniband
    assert server.image is not None
    assert server.image.gpu_driver is True
    assert [(p.port, p.source) for p in server.ports] == [(8080, "10.0.0.0/8")]


def test_flotilla_workload_types() -> None:
    """Flotilla's own types map onto container and batch kinds with their resources."""
    requirements = _check("flotilla_workloads.yaml", {"replicas": "3"})

    kinds = {node.name: node.kind for node in requirements.nodes}
    assert kinds == {
        "web": WorkloadKind.CONTAINER_APPLICATION,
        "migrate": WorkloadKind.CONTAINER_JOB,
        "train": WorkloadKind.BATCH_JOB,
    }
    web, train = requirements.node("web"), requirements.node("train")
    assert web is not None
    assert train is not None
    assert (web.count, web.resources.cpus, web.container_image) == (3, 0.5, "nginx:1.27")
    assert (train.count, train.resources.memory_mb, train.resources.infiniband) == (2, 256000, True)
    assert train.properties["wall_time_seconds"] == 12 * 3600
    assert [p.site for p in requirements.placements] == ["recas-bari"]


@pytest.mark.parametrize(
    ("text", "megabytes"),
    [("4 GB", 4000), ("2048 MB", 2048), ("1 GiB", 1074), ("512MiB", 537), (1024, 1024)],
)
def test_memory_sizes_follow_tosca_units(text: object, megabytes: int) -> None:
    """Memory converts with TOSCA's decimal and binary units, rounded up to whole MB."""
    from flotilla.scheduler.tosca.value import size_mb

    assert size_mb(text) == megabytes


def test_type_library_is_closed_under_nested_imports() -> None:
    """Every import of every shipped type file resolves inside the library."""
    from flotilla.scheduler.tosca import TypeLibrary
    from flotilla.scheduler.tosca.library import FLOTILLA_TYPES

    library = TypeLibrary.load()
    roots = [
        "https://raw.githubusercontent.com/indigo-dc/tosca-types/master/custom_types.yaml",
        "https://baltig.infn.it/infn-cloud/tosca-types/raw/v3.4.0/tosca_types/applications/spark_types.yaml",
        FLOTILLA_TYPES,
    ]
    closure = library.closure(roots)

    assert len(closure) >= 5
    assert all(path.is_file() for path in closure.values())
