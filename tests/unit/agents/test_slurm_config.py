"""The ``slurm:`` section of a site file, and what the driver checks before it connects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flotilla.agents.config import AgentConfig, load_agent_config
from flotilla.agents.hpc_slurm import SlurmConfig, SlurmDriver, create_driver
from flotilla.agents.hpc_slurm.ssh import LoginNodeClosedError, command_line
from flotilla.agents.registry import create_driver as create_any_driver
from flotilla.errors import ConfigurationError
from flotilla.schemas import AttemptRef, SiteKind

EXAMPLE = Path(__file__).parents[3] / "examples" / "slurm-site.yaml"
# A syntactically valid OpenSSH private key that is not one (never used to log in anywhere).
SECRET = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n"


def _site(**slurm: Any) -> AgentConfig:
    section = {
        "login_host": "login.example.org",
        "user": "flotilla",
        "key": {"env": "SLURM_KEY"},
        "known_hosts": "/etc/flotilla/known_hosts",
    }
    return AgentConfig.model_validate({"site": "hpc", "kind": "slurm", "slurm": section | slurm})


def test_example_site_file_builds_a_slurm_driver() -> None:
    """examples/slurm-site.yaml is valid and yields the Slurm driver with its settings."""
    config = load_agent_config(EXAMPLE)
    driver = create_any_driver(config)
    assert isinstance(driver, SlurmDriver)
    assert driver.kind is SiteKind.SLURM
    assert driver.config.jump is not None
    assert driver.config.jump.port == 2222
    assert driver.config.account_for("physics", None) == "flotilla"
    assert driver.config.account_for("physics", "override") == "override"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"login_host": None}, "slurm: login_host:"),
        ({"loginhost": "x"}, "slurm: loginhost: Extra inputs are not permitted"),
        ({"port": 0}, "slurm: port:"),
        ({"key": {"env": "A", "file": "/b"}}, "slurm: key: Value error, give exactly one"),
        ({"default_partition": "cpu main"}, "slurm: default_partition:"),
        ({"group_accounts": {"g": "$(id)"}}, "slurm: group_accounts.g:"),
        ({"jobs_directory": "../elsewhere"}, "slurm: jobs_directory: Value error"),
        ({"jobs_directory": "dir with space"}, "slurm: jobs_directory:"),
        ({"jump": {"host": "bastion", "proxy": True}}, "slurm: jump.proxy: Extra inputs"),
        ({"max_channels": 0}, "slurm: max_channels:"),
    ],
)
def test_wrong_fields_are_named(change: dict[str, Any], problem: str) -> None:
    """A wrong slurm: field raises ConfigurationError naming it."""
    config = _site(**change)
    with pytest.raises(ConfigurationError) as caught:
        create_driver(config)
    assert problem in caught.value.message


async def test_unreadable_key_is_a_configuration_error_without_its_content(tmp_path: Path) -> None:
    """A key that does not parse is refused on open, and its content is not in the message."""
    key = tmp_path / "id"
    key.write_text(SECRET)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    driver = create_driver(_site(key={"file": str(key)}, known_hosts=str(known_hosts)))
    with pytest.raises(
        ConfigurationError, match=r"slurm\.key: not a readable private key"
    ) as caught:
        await driver.__aenter__()
    assert "c2VjcmV0" not in str(caught.value)
    assert "BEGIN" not in str(caught.value)


async def test_missing_known_hosts_is_a_configuration_error(tmp_path: Path) -> None:
    """Without a readable known_hosts file the driver does not open: no unchecked host keys."""
    driver = create_driver(_site(known_hosts=str(tmp_path / "absent")))
    with pytest.raises(ConfigurationError, match=r"slurm\.known_hosts: cannot read"):
        await driver.__aenter__()


async def test_a_driver_not_opened_refuses_work() -> None:
    """Using the driver outside its context raises a clear error instead of connecting."""
    driver = SlurmDriver(SlurmConfig.model_validate(_site().driver))
    ref = AttemptRef(deployment_id="0b5c3f3e-9a0e-4c43-9d0c-6c1f1a2b3c4d", site="hpc", attempt=1)
    with pytest.raises(LoginNodeClosedError, match="not open"):
        await driver.status(ref)


def test_command_lines_quote_every_word() -> None:
    """Remote command lines quote each word and join commands with &&."""
    line = command_line(["mkdir", "-p", "--", "/a b/$(id)"], ["sbatch", "--parsable"])
    assert line == "mkdir -p -- '/a b/$(id)' && sbatch --parsable"
