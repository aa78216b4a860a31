"""The SSH side of a Slurm site: one verified connection to the login node, reused.

Commands are argument lists, joined with ``shlex.join`` so that no value can reach the
login shell unquoted; larger text (a job script) travels on the command's stdin. At most
``max_channels`` commands run at once, below OpenSSH's ``MaxSessions``; every connect and
every command is bounded by a timeout. A lost connection is replaced by the next command.
"""

from __future__ import annotations

import asyncio
import enum
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import asyncssh
import structlog

from flotilla.agents.config import SecretRef
from flotilla.agents.driver import SiteUnavailableError
from flotilla.agents.hpc_slurm.config import SlurmConfig
from flotilla.errors import ConfigurationError, FlotillaError

_log = structlog.get_logger("flotilla.agents.slurm")

Command = Sequence[str]
# Pauses before a refused session request is tried again.
_SESSION_RETRY = (0.2, 0.5, 1.0, 2.0)


class LoginRefusedError(ConfigurationError):
    """The login node (or bastion) was refused: unknown or changed host key, or our key refused.

    ``code`` is ``host_key_rejected`` or ``login_refused``; retrying does not help until the
    site file or the known_hosts file is fixed.
    """

    def __init__(self, message: str, *, code: str, resource: str | None = None) -> None:
        super().__init__(message, resource=resource)
        self.code = code


class LoginNodeClosedError(FlotillaError):
    """The connection was used before ``open()`` or after ``close()``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult:
    """How a remote command ended and what it printed."""

    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether the command exited with status 0."""
        return self.exit_status == 0

    def error_text(self, limit: int = 2000) -> str:
        """What the command said on stderr (or stdout), for an error message."""
        said = (self.stderr.strip() or self.stdout.strip())[-limit:]
        return said or f"exit status {self.exit_status}"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Endpoint:
    host: str
    port: int
    user: str
    key: asyncssh.SSHKey

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


class _State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


def command_line(*commands: Command) -> str:
    """Commands joined with ``&&``, every word quoted for a POSIX shell."""
    return " && ".join(shlex.join(command) for command in commands)


class LoginNode:
    """One login node reached over SSH (through a bastion when configured)."""

    def __init__(self, config: SlurmConfig) -> None:
        self._config = config
        self._state = _State.UNOPENED
        self._channels = asyncio.Semaphore(config.max_channels)
        self._connecting = asyncio.Lock()
        self._login: _Endpoint | None = None
        self._jump: _Endpoint | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._tunnel: asyncssh.SSHClientConnection | None = None

    @property
    def name(self) -> str:
        """The login node as errors name it: ``host:port``, with the bastion when there is one."""
        name = f"{self._config.login_host}:{self._config.port}"
        jump = self._config.jump
        return f"{name} (via {jump.host}:{jump.port})" if jump else name

    def open(self) -> None:
        """Read the keys and the known_hosts file; connecting waits for the first command.

        Raises:
            ConfigurationError: a key or the known_hosts file cannot be read.
        """
        if self._state is not _State.UNOPENED:
            raise LoginNodeClosedError("the login node connection can be opened only once")
        config = self._config
        _known_hosts(config)
        key = _private_key(config.key, config.key_passphrase, "slurm.key")
        self._login = _Endpoint(host=config.login_host, port=config.port, user=config.user, key=key)
        if config.jump is not None:
            jump = config.jump
            jump_key = key
            if jump.key is not None:
                jump_key = _private_key(jump.key, jump.key_passphrase, "slurm.jump.key")
            user = jump.user or config.user
            self._jump = _Endpoint(host=jump.host, port=jump.port, user=user, key=jump_key)
        self._state = _State.OPENED

    async def close(self) -> None:
        """Close the connections; safe to call twice or before ``open()``."""
        self._state = _State.CLOSED
        await self._drop()

    async def run(
        self,
        *commands: Command,
        stdin: str | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run commands (joined with ``&&``) on the login node and collect their output.

        Raises:
            SiteUnavailableError: the login node cannot be reached, or the command timed out.
            LoginRefusedError: the host key is unknown or changed, or the login was refused.
        """
        if self._state is not _State.OPENED:
            raise LoginNodeClosedError(f"the connection to {self.name} is not open")
        bound = timeout if timeout is not None else self._config.command_timeout.total_seconds()
        what = commands[0][0] if commands and commands[0] else "command"
        async with self._channels:
            try:
                done = await self._run(command_line(*commands), stdin, bound)
            except TimeoutError as exc:  # asyncssh.TimeoutError is one too
                raise SiteUnavailableError(
                    f"{what} on {self.name} did not finish within {bound:g} s"
                ) from exc
            except (asyncssh.Error, OSError) as exc:
                await self._drop()
                raise SiteUnavailableError(
                    f"lost the connection to {self.name} while running {what}: {_reason(exc)}"
                ) from exc
        status = done.exit_status if done.exit_status is not None else 255
        return CommandResult(
            exit_status=status, stdout=_text(done.stdout), stderr=_text(done.stderr)
        )

    async def _run(
        self, line: str, stdin: str | None, bound: float
    ) -> asyncssh.SSHCompletedProcess:
        # sshd frees a session slot a moment after the channel closes, so a refused session
        # request is tried again after a pause; nothing ran on the login node in that case.
        for pause in (*_SESSION_RETRY, None):
            conn = await self._connection()  # bounded by connect_timeout on its own
            try:
                async with asyncio.timeout(bound + 5):
                    return await conn.run(line, input=stdin, check=False, timeout=bound)
            except asyncssh.ChannelOpenError:
                if pause is None or conn.is_closed():
                    raise
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._connecting:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            await self._drop()
            assert self._login is not None
            tunnel = await self._connect(self._jump, None) if self._jump else None
            try:
                self._conn = await self._connect(self._login, tunnel)
            except BaseException:
                if tunnel is not None:
                    tunnel.close()
                raise
            self._tunnel = tunnel
            _log.info("login_node_connected", login=self.name)
            return self._conn

    async def _connect(
        self, endpoint: _Endpoint, tunnel: asyncssh.SSHClientConnection | None
    ) -> asyncssh.SSHClientConnection:
        bound = self._config.connect_timeout.total_seconds()
        try:
            async with asyncio.timeout(bound + 1):
                return await asyncssh.connect(
                    endpoint.host,
                    port=endpoint.port,
                    tunnel=tunnel or (),
                    username=endpoint.user,
                    client_keys=[endpoint.key],
                    known_hosts=str(self._config.known_hosts),
                    config=None,
                    agent_path=None,
                    preferred_auth="publickey",
                    connect_timeout=bound,
                    login_timeout=bound,
                    keepalive_interval=30,
                    keepalive_count_max=3,
                )
        except asyncssh.HostKeyNotVerifiable as exc:
            message = _host_key_problem(self._config, endpoint)
            _log.warning("host_key_rejected", host=endpoint.host, port=endpoint.port)
            raise LoginRefusedError(message, code="host_key_rejected") from exc
        except asyncssh.PermissionDenied as exc:
            raise LoginRefusedError(
                f"{endpoint.address} refused the login: the key is not accepted for "
                f"{endpoint.user} ({_reason(exc)})",
                code="login_refused",
            ) from exc
        except (TimeoutError, asyncssh.Error, OSError) as exc:
            raise SiteUnavailableError(
                f"cannot reach {endpoint.host}:{endpoint.port}"
                f"{' through the bastion' if tunnel else ''}: {_reason(exc)}"
            ) from exc

    async def _drop(self) -> None:
        conn, tunnel = self._conn, self._tunnel
        self._conn = self._tunnel = None
        for each in (conn, tunnel):
            if each is not None:
                each.close()
                try:
                    async with asyncio.timeout(5):
                        await each.wait_closed()
                except (TimeoutError, asyncssh.Error, OSError):
                    _log.debug("ssh_close_incomplete")


def _known_hosts(config: SlurmConfig) -> None:
    path = config.known_hosts
    try:
        asyncssh.read_known_hosts(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"slurm.known_hosts: cannot read {path}: {_reason(exc)}") from exc


def _private_key(ref: SecretRef, passphrase: SecretRef | None, where: str) -> asyncssh.SSHKey:
    secret = ref.read().get_secret_value()
    phrase = passphrase.read().get_secret_value() if passphrase is not None else None
    try:
        return asyncssh.import_private_key(secret + "\n", phrase)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError) as exc:
        # Never echo the key material: name the setting only.
        raise ConfigurationError(
            f"{where}: not a readable private key (wrong format or passphrase)"
        ) from exc


def _host_key_problem(config: SlurmConfig, endpoint: _Endpoint) -> str:
    name = f"{endpoint.host}:{endpoint.port}"
    try:
        known = asyncssh.read_known_hosts(str(config.known_hosts))
        trusted = known.match(endpoint.host, "", endpoint.port)[0]
    except (OSError, ValueError):
        trusted = []
    if trusted:
        return (
            f"the host key of {name} does not match the one in {config.known_hosts}: refusing "
            "to connect (the host's key changed, or something is in between)"
        )
    return (
        f"the host key of {name} is not in {config.known_hosts}: refusing to connect to an "
        "unknown host (add its key to the known_hosts file)"
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.DisconnectError | asyncssh.ChannelOpenError):
        return exc.reason or type(exc).__name__
    text = str(exc)
    return text or type(exc).__name__


def _text(data: object) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return data if isinstance(data, str) else ""
