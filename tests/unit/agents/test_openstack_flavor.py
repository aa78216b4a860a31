"""Flavor extra specs read as Flotilla shapes, and free room counted from Placement summaries."""

from __future__ import annotations

import pytest

from flotilla.agents.openstack.flavor import (
    FlavorSpec,
    PlacementQuery,
    fitting_count,
    gpu_of,
    has_infiniband,
    placement_query,
    shape_of,
)
from flotilla.schemas import Gpu


@pytest.mark.parametrize(
    ("specs", "gpu"),
    [
        ({}, None),
        ({"hw:cpu_policy": "dedicated"}, None),
        (
            {"resources:CUSTOM_GPU_NVIDIA_A100": "1", "trait:CUSTOM_GPU_NVIDIA_A100": "required"},
            Gpu(count=1, vendor="nvidia", model="a100"),
        ),
        ({"resources:VGPU": "1"}, Gpu(count=1)),
        ({"resources:PGPU": "2"}, Gpu(count=2)),
        (
            {"resources1:VGPU": "1", "trait1:CUSTOM_GPU_NVIDIA_T4": "required"},
            Gpu(count=1, vendor="nvidia", model="t4"),
        ),
        (
            {"resources:CUSTOM_GPU_AMD_MI250_X": "4"},
            Gpu(count=4, vendor="amd", model="mi250-x"),
        ),
        ({"pci_passthrough:alias": "a100:2"}, Gpu(count=2, vendor="nvidia", model="a100")),
        (
            {"pci_passthrough:alias": "v100:1,mlx5-ib:1"},
            Gpu(count=1, vendor="nvidia", model="v100"),
        ),
        (
            {"gpu_number": "2", "gpu_vendor": "NVIDIA", "gpu_model": "Tesla V100"},
            Gpu(count=2, vendor="NVIDIA", model="Tesla V100"),
        ),
        ({"resources:VGPU": "0"}, None),
    ],
)
def test_gpus_come_from_resource_classes_traits_aliases_and_explicit_keys(
    specs: dict[str, str], gpu: Gpu | None
) -> None:
    """Every way an operator describes a flavor's GPUs gives the same count, vendor and model."""
    assert gpu_of(specs) == gpu


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        ({}, False),
        ({"trait:CUSTOM_INFINIBAND": "required"}, True),
        ({"trait:CUSTOM_INFINIBAND": "forbidden"}, False),
        ({"infiniband": "true"}, True),
        ({"pci_passthrough:alias": "mlx5-ib:1"}, True),
    ],
)
def test_infiniband_comes_from_a_required_trait_a_key_or_a_pci_alias(
    specs: dict[str, str], expected: bool
) -> None:
    """A flavor offers InfiniBand when a trait, a key or a PCI alias says so."""
    assert has_infiniband(specs) is expected


def test_shape_carries_size_gpu_features_and_free_count() -> None:
    """A flavor becomes a shape with its size, GPUs, custom traits and the count given."""
    flavor = FlavorSpec(
        name="g1.a100x1",
        id="f1",
        vcpus=8,
        ram_mb=32768,
        disk_gb=100,
        extra_specs={
            "resources:CUSTOM_GPU_NVIDIA_A100": "1",
            "trait:CUSTOM_GPU_NVIDIA_A100": "required",
        },
    )
    shape = shape_of(flavor, available=3)
    assert (shape.name, shape.cpus, shape.memory_mb, shape.disk_gb) == ("g1.a100x1", 8, 32768, 100)
    assert shape.gpu == Gpu(count=1, vendor="nvidia", model="a100")
    assert shape.features == ["custom_gpu_nvidia_a100"]
    assert shape.available == 3


def test_placement_query_is_what_nova_asks_for() -> None:
    """Standard classes from the flavor's size, overridden and extended by extra specs."""
    flavor = FlavorSpec(
        name="g",
        id="g",
        vcpus=4,
        ram_mb=16384,
        disk_gb=40,
        ephemeral_gb=10,
        swap_mb=1500,
        extra_specs={
            "resources:VGPU": "1",
            "resources:DISK_GB": "0",
            "trait:CUSTOM_FAST": "required",
            "trait:CUSTOM_SLOW": "forbidden",
        },
    )
    query = placement_query(flavor)
    assert query == PlacementQuery(
        resources={"VCPU": 4, "MEMORY_MB": 16384, "VGPU": 1},
        required=("CUSTOM_FAST",),
        forbidden=("CUSTOM_SLOW",),
    )
    assert query.params(limit=50) == {
        "resources": "MEMORY_MB:16384,VCPU:4,VGPU:1",
        "limit": "50",
        "required": "CUSTOM_FAST,!CUSTOM_SLOW",
    }


def test_pci_flavors_are_not_counted_by_placement() -> None:
    """PCI devices are usually not Placement inventory: the count stays unknown."""
    flavor = FlavorSpec(
        name="p",
        id="p",
        vcpus=1,
        ram_mb=1,
        disk_gb=1,
        extra_specs={"pci_passthrough:alias": "a100:2"},
    )
    assert placement_query(flavor) is None


def test_fitting_count_pools_each_tree_and_sums_trees() -> None:
    """A compute node and its nested GPU provider pool their room; trees add up."""
    query = PlacementQuery(resources={"VCPU": 2, "MEMORY_MB": 1024, "VGPU": 1})
    summaries = {
        "cn1": {
            "root_provider_uuid": "cn1",
            "resources": {
                "VCPU": {"capacity": 16, "used": 2},
                "MEMORY_MB": {"capacity": 8192, "used": 0},
            },
        },
        "gpu1": {"root_provider_uuid": "cn1", "resources": {"VGPU": {"capacity": 4, "used": 1}}},
        "cn2": {
            "root_provider_uuid": "cn2",
            "resources": {
                "VCPU": {"capacity": 4, "used": 0},
                "MEMORY_MB": {"capacity": 8192, "used": 0},
                "VGPU": {"capacity": 8, "used": 0},
            },
        },
    }
    # cn1: VCPU 7, MEMORY 8, VGPU 3 -> 3; cn2: VCPU 2, MEMORY 8, VGPU 8 -> 2
    assert fitting_count(summaries, query) == 5
    assert fitting_count({}, query) == 0
