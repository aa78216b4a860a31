"""Dependencies point inward, and foreign SDKs stay inside their adapters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "src" / "flotilla"

# What each layer may import from the project (besides itself and the leaf modules).
LEAVES = {"flotilla.backoff", "flotilla.errors", "flotilla.schemas", "flotilla.settings"}
ALLOWED = {
    "schemas": set(),
    "backoff.py": set(),
    "errors.py": set(),
    "settings.py": set(),
    "bus": LEAVES,
    "broker": LEAVES | {"flotilla.bus"},
}
# Third-party SDKs that only one module (or package) may import.
CONFINED = {
    "aio_pika": "bus/rabbitmq.py",
    "aiormq": "bus/rabbitmq",  # rabbitmq.py and its socket writer, rabbitmq_wire.py
    "aiomqtt": "bus/mqtt.py",
    "openstack": "agents/openstack",
    "kubernetes_asyncio": "agents/kubernetes",
    "asyncssh": "agents/hpc_slurm",
    "hvac": "secrets",
    "sqlalchemy": "scheduler/sql",
    "alembic": "scheduler/sql",
    "asyncpg": "scheduler/sql",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_inner_layers(layer: str) -> None:
    """schemas imports nothing of the project; bus only schemas; broker only bus and below."""
    offending = []
    root = PACKAGE / layer
    for path in [root] if root.is_file() else root.rglob("*.py"):
        for name in _imports(path):
            own = f"flotilla.{layer.removesuffix('.py')}"
            if not name.startswith("flotilla.") or name == own or name.startswith(own + "."):
                continue
            if not any(name == ok or name.startswith(ok + ".") for ok in ALLOWED[layer]):
                offending.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert offending == []


def test_foreign_sdks_stay_in_their_adapter() -> None:
    """aio_pika, aiomqtt and the site SDKs are imported only inside their own adapter."""
    offending = []
    for path in _modules():
        relative = path.relative_to(PACKAGE).as_posix()
        for name in _imports(path):
            root = name.split(".")[0]
            home = CONFINED.get(root)
            if home is not None and not relative.startswith(home):
                offending.append(f"{relative} imports {name} (belongs in {home})")
    assert offending == []


def test_importing_the_bus_does_not_load_aio_pika() -> None:
    """The bus package is usable in embedded mode without the RabbitMQ client loaded."""
    import subprocess
    import sys

    code = "import sys, flotilla.bus, flotilla.broker; print('aio_pika' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
