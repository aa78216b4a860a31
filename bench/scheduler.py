"""Placements per second and decision latency of the scheduler, with many sites, on RabbitMQ.

Simulated sites report leases and capacity (varied flavors, GPUs on some, site-wide and
per-group quotas, several groups with SLAs) through the broker; then deployment requests go
through the broker into a ``SchedulerService``, which decides and publishes a
``ProvisionDeployment`` per request through its outbox relay. Templates are not parsed: a
fixed ``TemplateSource`` hands out prepared requirements, so TOSCA parsing is not measured.

Every exchange and queue is a uuid-named copy of the core topology (a thin wrapper renames
the scheduler's fixed names), so the run never touches a real federation on the same
broker; everything it declares is deleted at the end. Provision commands for all sites are
counted on one catch-all queue bound to ``site.#`` instead of one queue per site.

    python bench/scheduler.py --sites 1000 --requests 10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.queues
import os
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, cast
from urllib.parse import urlsplit

import aio_pika
import aiormq
import psutil
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from baseline import aiormq_defaults
from broker_cleanup import delete_topology
from flotilla import runtime
from flotilla.broker import core_topology, route
from flotilla.broker.topology import COMMANDS, EVENTS
from flotilla.bus import (
    Binding,
    Bus,
    BusState,
    DeadLetterPolicy,
    Delivery,
    DeliveryPolicy,
    Handler,
    Middleware,
    Queue,
    RawHandler,
    Route,
    Subscription,
    Topology,
)
from flotilla.bus.memory import MemoryBroker, MemoryBus
from flotilla.bus.rabbitmq import RabbitBus, connect_robust, message_properties
from flotilla.log import configure_logging
from flotilla.scheduler.lifecycle import Lifecycle
from flotilla.scheduler.model import Change
from flotilla.scheduler.placement import PlacementRequest, Placer, Ranking, Sla
from flotilla.scheduler.registry import SiteRegistry
from flotilla.scheduler.relay import OutboxRelay, Relay
from flotilla.scheduler.relay_process import BEHIND_AFTER, RelayProcess
from flotilla.scheduler.service import SchedulerService
from flotilla.scheduler.store import MemoryStore, Store
from flotilla.scheduler.tosca.requirement import NodeRequirements, OsImage, TemplateRequirements
from flotilla.schemas import (
    Capabilities,
    Capacity,
    DeploymentRequest,
    DeploymentRequested,
    Envelope,
    Gpu,
    Image,
    Lease,
    QuotaUsage,
    Resources,
    Scheduling,
    Shape,
    SiteCapacity,
    SiteKind,
    SiteLease,
    WorkloadKind,
    encode,
    new_id,
)
from flotilla.settings import EventLoop, LogSettings, SchedulerSettings

T = TypeVar("T")
VM = WorkloadKind.VIRTUAL_MACHINE
GROUPS = tuple(f"group-{i}" for i in range(8))
REGIONS = ("eu-west", "eu-central", "us-east", "ap-south")
DATASETS = ("cmip6", "lhc-run3", "era5", "genomes-1k")
GPUS = (
    Gpu(count=1, vendor="NVIDIA", model="A100"),
    Gpu(count=2, vendor="NVIDIA", model="A100"),
    Gpu(count=1, vendor="NVIDIA", model="V100"),
    Gpu(count=4, vendor="NVIDIA", model="H100"),
    Gpu(count=1, vendor="AMD", model="MI250"),
)
IMAGES = (
    Image(name="ubuntu-22.04", os_distribution="ubuntu", os_version="22.04"),
    Image(name="ubuntu-20.04", os_distribution="ubuntu", os_version="20.04"),
    Image(name="rocky-9", os_distribution="rocky", os_version="9.3"),
    Image(name="centos-7", os_distribution="centos", os_version="7"),
)
GPU_IMAGE = Image(
    name="ubuntu-22.04-cuda", os_distribution="ubuntu", os_version="22.04", gpu_driver="535"
)


# --- The simulated federation -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteSpec:
    """One simulated site: what it reports."""

    name: str
    kind: SiteKind
    capabilities: Capabilities
    quotas: tuple[QuotaUsage, ...]


def make_sites(count: int, rng: random.Random) -> list[SiteSpec]:
    """``count`` sites: mostly clouds, some Kubernetes and Slurm, GPUs on about one in six."""
    return [_site(f"site-{i:04d}", rng) for i in range(count)]


def _site(name: str, rng: random.Random) -> SiteSpec:
    kind = rng.choices([SiteKind.OPENSTACK, SiteKind.KUBERNETES, SiteKind.SLURM], [6, 2, 2])[0]
    gpu = rng.choice(GPUS) if rng.random() < 0.17 else None
    shapes = _shapes(kind, gpu, rng)
    kinds = {
        SiteKind.OPENSTACK: [VM, WorkloadKind.VOLUME],
        SiteKind.KUBERNETES: [WorkloadKind.CONTAINER_APPLICATION, WorkloadKind.CONTAINER_JOB],
        SiteKind.SLURM: [WorkloadKind.BATCH_JOB, WorkloadKind.CONTAINER_JOB],
    }[kind]
    images = [*rng.sample(IMAGES, rng.randint(1, 3)), *([GPU_IMAGE] if gpu else [])]
    capabilities = Capabilities(
        workload_kinds=kinds,
        shapes=shapes,
        gpus=[gpu] if gpu else [],
        infiniband=kind is SiteKind.SLURM and rng.random() < 0.5,
        images=images if kind is SiteKind.OPENSTACK else [],
        datasets=rng.sample(DATASETS, rng.randint(0, 2)),
        regions=[rng.choice(REGIONS)],
    )
    return SiteSpec(name=name, kind=kind, capabilities=capabilities, quotas=_quotas(gpu, rng))


def _shapes(kind: SiteKind, gpu: Gpu | None, rng: random.Random) -> list[Shape]:
    sizes = [(1, 2048, 20), (2, 4096, 40), (4, 8192, 80), (8, 16384, 160), (16, 65536, 320)]
    sizes += [(32, 131072, 640), (64, 262144, 1000)] if kind is SiteKind.SLURM else []
    chosen = sorted(rng.sample(sizes, rng.randint(3, len(sizes))))
    ib = kind is SiteKind.SLURM and rng.random() < 0.5
    shapes = [
        Shape(name=f"s{cpus}.{mem // 1024}g", cpus=cpus, memory_mb=mem, disk_gb=disk, infiniband=ib)
        for cpus, mem, disk in chosen
    ]
    if gpu is not None:
        name = f"g{gpu.count}.{(gpu.model or 'gpu').lower()}"
        shapes.append(Shape(name=name, cpus=16, memory_mb=65536, disk_gb=200, gpu=gpu))
    return shapes


def _quotas(gpu: Gpu | None, rng: random.Random) -> tuple[QuotaUsage, ...]:
    cores = float(rng.choice([2000, 5000, 10000, 20000]))
    quotas = [
        QuotaUsage(resource="cores", limit=cores, used=round(cores * rng.uniform(0, 0.5))),
        QuotaUsage(resource="ram_mb", limit=cores * 4096, used=0),
        QuotaUsage(resource="instances", limit=cores / 2, used=rng.randint(0, 50)),
        QuotaUsage(resource="volume_gb", limit=100000, used=0),
    ]
    if gpu is not None:
        quotas.append(QuotaUsage(resource="gpus", limit=rng.choice([64, 128, 256]), used=0))
    if rng.random() < 0.3:  # a share reserved for one group
        group = rng.choice(GROUPS)
        quotas.append(QuotaUsage(resource="cores", limit=cores / 4, used=0, group=group))
    return tuple(quotas)


def make_slas(sites: Sequence[SiteSpec], rng: random.Random) -> list[Sla]:
    """Each site serves one to three groups, with preferences and, sometimes, limits."""
    slas = []
    for site in sites:
        for group in rng.sample(GROUPS, rng.randint(1, 3)):
            limits = {"cores": float(rng.choice([1000, 4000]))} if rng.random() < 0.2 else {}
            preference = round(rng.uniform(0.3, 1.0), 2)
            slas.append(
                Sla(
                    id=f"sla-{site.name}-{group}",
                    group=group,
                    site=site.name,
                    preference=preference,
                    limits=limits,
                )
            )
    return slas


def site_messages(site: SiteSpec, sequence: int, rng: random.Random) -> list[Envelope]:
    """A lease and a capacity report of ``site``, with usage drifting a little each time."""
    lease = Lease(
        site=site.name,
        kind=site.kind,
        ttl=timedelta(minutes=30),
        sequence=sequence,
        agent_instance="bench",
    )
    quotas = [
        q.model_copy(update={"used": min(q.limit or 0.0, q.used * rng.uniform(0.95, 1.05))})
        for q in site.quotas
    ]
    capacity = Capacity(
        site=site.name,
        kind=site.kind,
        sequence=sequence,
        capabilities=site.capabilities,
        quotas=quotas,
    )
    source = f"/sites/{site.name}"
    return [SiteLease.create(lease, source=source), SiteCapacity.create(capacity, source=source)]


# --- The workload -------------------------------------------------------------------------


def _node(name: str, kind: WorkloadKind, **fields: Any) -> NodeRequirements:
    return NodeRequirements(name=name, type="bench", kind=kind, **fields)


def make_templates() -> dict[str, TemplateRequirements]:
    """Prepared requirements by template name: what the TOSCA parser would have produced."""
    ubuntu = OsImage(distribution="ubuntu", version="22")
    cuda = OsImage(distribution="ubuntu", version="22", gpu_driver=True)
    nodes: dict[str, tuple[NodeRequirements, ...]] = {
        "web": (_node("server", VM, resources=Resources(cpus=2, memory_mb=4096), image=ubuntu),),
        "cluster": (
            _node("head", VM, resources=Resources(cpus=4, memory_mb=8192), image=ubuntu),
            _node("worker", VM, count=3, resources=Resources(cpus=8, memory_mb=16384)),
            _node("data", WorkloadKind.VOLUME, resources=Resources(cpus=0, disk_gb=500)),
        ),
        "gpu": (
            _node(
                "trainer",
                VM,
                resources=Resources(cpus=8, memory_mb=32768, gpu=Gpu(count=1, vendor="nvidia")),
                image=cuda,
            ),
        ),
        "mpi": (
            _node(
                "job",
                WorkloadKind.BATCH_JOB,
                count=4,
                resources=Resources(cpus=16, memory_mb=65536, infiniband=True),
            ),
        ),
        "app": (
            _node(
                "frontend",
                WorkloadKind.CONTAINER_APPLICATION,
                count=2,
                resources=Resources(cpus=1, memory_mb=2048),
                container_image="nginx:1.27",
            ),
        ),
    }
    return {
        name: TemplateRequirements(digest=f"bench-{name}", nodes=template)
        for name, template in nodes.items()
    }


class FixedTemplates:
    """A ``TemplateSource`` handing out prepared requirements by template text."""

    def __init__(self, templates: Mapping[str, TemplateRequirements]) -> None:
        self._templates = templates

    async def requirements(self, template: str, inputs: Mapping[str, Any]) -> TemplateRequirements:
        """The prepared requirements named by ``template``."""
        return self._templates[template]


def make_requests(count: int, rng: random.Random) -> list[DeploymentRequested]:
    """Requests over the templates and groups; some pinned to a region."""
    names = ("web", "web", "cluster", "gpu", "mpi", "app", "app")
    messages = []
    for _ in range(count):
        region = rng.choice(REGIONS) if rng.random() < 0.1 else None
        request = DeploymentRequest(
            deployment_id=new_id(),
            template=rng.choice(names),
            owner="bench",
            group=rng.choice(GROUPS),
            scheduling=Scheduling(region=region),
        )
        messages.append(DeploymentRequested.create(request, source="/bench/portal"))
    return messages


# --- Names: a uuid-named copy of the core topology ----------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchTopology:
    """The run's copy of the core topology, its two counting queues, and the renaming."""

    topology: Topology
    names: Mapping[str, str]  # real exchange or queue name -> this run's name
    commands: str  # catch-all queue of every site's commands
    events: str  # catch-all queue of the public event stream


def bench_topology() -> BenchTopology:
    """``core_topology()`` with every name prefixed by a fresh uuid, plus two sink queues."""
    prefix = f"bench.{uuid.uuid4().hex[:10]}"
    core = core_topology()
    names = {e.name: f"{prefix}.{e.name}" for e in core.exchanges}
    names |= {q.name: f"{prefix}.{q.name}" for q in core.queues}
    commands, events = f"{prefix}.commands-all", f"{prefix}.events-all"
    policy = DeliveryPolicy(
        retry=replace(core.policy.retry, prefix=f"{prefix}.retry"),
        dead_letter=DeadLetterPolicy(exchange=f"{prefix}.dead", queue=f"{prefix}.dead"),
    )
    topology = Topology(
        policy=policy,
        exchanges=tuple(replace(e, name=names[e.name]) for e in core.exchanges),
        queues=(
            *(replace(q, name=names[q.name]) for q in core.queues),
            Queue(name=commands),
            Queue(name=events),
        ),
        bindings=(
            *(replace(b, queue=names[b.queue], exchange=names[b.exchange]) for b in core.bindings),
            Binding(queue=commands, exchange=names[COMMANDS], pattern="site.#"),
            Binding(queue=events, exchange=names[EVENTS], pattern="#"),
        ),
    )
    return BenchTopology(topology=topology, names=names, commands=commands, events=events)


class RenamedBus:
    """A ``Bus`` that maps the fixed Flotilla names to the run's copies, and nothing else."""

    def __init__(self, inner: Bus, names: Mapping[str, str]) -> None:
        self._inner = inner
        self._names = names

    @property
    def state(self) -> BusState:
        """The wrapped bus's state."""
        return self._inner.state

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    async def declare(self, topology: Topology) -> None:
        """Declare ``topology`` as given (it is already renamed)."""
        await self._inner.declare(topology)

    async def publish(
        self, message: Envelope, route: Route, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Publish to the run's copy of the route's exchange."""
        renamed = Route(exchange=self._rename(route.exchange), routing_key=route.routing_key)
        await self._inner.publish(message, renamed, headers=headers)

    async def subscribe(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int = 16,
        middlewares: Sequence[Middleware] = (),
    ) -> Subscription:
        """Consume the run's copy of ``queue``."""
        return await self._inner.subscribe(
            self._rename(queue), handler, prefetch=prefetch, middlewares=middlewares
        )

    async def subscribe_raw(
        self, queue: str, handler: RawHandler, *, prefetch: int = 16
    ) -> Subscription:
        """Consume the run's copy of ``queue`` without decoding."""
        return await self._inner.subscribe_raw(self._rename(queue), handler, prefetch=prefetch)

    async def close(self, *, timeout: float = 10.0) -> None:
        """Close the wrapped bus."""
        await self._inner.close(timeout=timeout)

    def _rename(self, name: str) -> str:
        return self._names.get(name, name)


# --- Instruments --------------------------------------------------------------------------


@dataclass(slots=True)
class Timings:
    """Durations of decisions and rankings, and when decisions started and ended."""

    decisions: list[float] = field(default_factory=list)
    rankings: list[float] = field(default_factory=list)
    first: float | None = None
    last: float = 0.0
    # When each deployment's decision was made (perf_counter is the machine's monotonic
    # clock on Linux, so the load process's arrival times compare with these).
    decided: dict[str, float] = field(default_factory=dict)


class TimedLifecycle(Lifecycle):
    """A ``Lifecycle`` whose ``requested`` step (the placement decision) is timed.

    A new deployment's decision reads nothing from the store: its create is checked when
    the change is committed, which the "decision to command" latency includes.
    """

    def __init__(self, *, timings: Timings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timings = timings

    async def requested(self, message: DeploymentRequested) -> Change | None:
        """Decide, and record how long it took."""
        start = time.perf_counter()
        try:
            return await super().requested(message)
        finally:
            end = time.perf_counter()
            self.timings.decided[message.data.deployment_id] = end
            self.timings.decisions.append(end - start)
            self.timings.first = start if self.timings.first is None else self.timings.first
            self.timings.last = end


class TimedPlacer(Placer):
    """A ``Placer`` whose ``rank`` is timed."""

    def __init__(self, *args: Any, timings: Timings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timings = timings

    def rank(self, request: PlacementRequest) -> Ranking:
        """Rank, and record how long it took."""
        start = time.perf_counter()
        try:
            return super().rank(request)
        finally:
            self.timings.rankings.append(time.perf_counter() - start)


class Tally:
    """Counts provision commands and failed deployments; done when each request has one.

    ``arrived``: when each deployment's command (or failure event) arrived, by deployment.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.provisions = 0
        self.failures = 0
        self.events = 0
        self.last = 0.0
        self.arrived: dict[str, float] = {}
        self.done = asyncio.Event()

    def command(self, routing_key: str, deployment_id: str) -> None:
        """A command reached the catch-all commands queue."""
        if routing_key.endswith(".provision"):
            self.provisions += 1
            self._arrived(deployment_id)

    def event(self, routing_key: str, deployment_id: str) -> None:
        """An event reached the catch-all events queue."""
        self.events += 1
        if routing_key.endswith(".create_failed"):
            self.failures += 1
            self._arrived(deployment_id)

    def _arrived(self, deployment_id: str) -> None:
        self.arrived[deployment_id] = time.perf_counter()
        self._check()

    def _check(self) -> None:
        if self.provisions + self.failures >= self.expected:
            self.last = time.perf_counter()
            self.done.set()


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# --- The run ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """What to run."""

    url: str
    bus: str
    store: str
    sites: int
    requests: int
    concurrency: int
    rate: float
    prefetch: int
    churn: float
    raw_count: int
    seed: int
    loop: EventLoop
    relay: str  # "auto", "process" or "inline"

    @property
    def relay_process(self) -> bool:
        """Whether the outbox relay runs in a child process, as the scheduler does by
        default (``SchedulerSettings.relay_process``).

        It cannot with the memory store or bus, which live in this process.
        """
        if self.store == "memory" or self.bus != "rabbitmq":
            return False
        if self.relay == "auto":
            return SchedulerSettings().relay_process
        return self.relay == "process"


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadResult:
    """What the load side saw: the placement window and what arrived."""

    elapsed: float  # first request published -> last command (or failure) received
    publish_elapsed: float
    arrived: dict[str, float]  # when each deployment's command or failure arrived
    provisions: int
    failures: int
    events: int
    cpu: float  # the load process's CPU seconds over the window


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """What one run measured, on both sides."""

    load: LoadResult
    timings: Timings
    cpu: float  # the scheduler process's CPU seconds while the load ran
    relay_cpu: float | None  # its relay process's CPU seconds, when it has one
    broker_cpu: float | None  # the broker's CPU seconds while the load ran, if it is local
    database_cpu: float | None  # PostgreSQL's CPU seconds while the load ran (its store)
    # A SQL store's commits and the transactions they shared while the load ran.
    commits: tuple[int, int] | None
    slas: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """Sites, SLAs and requests: the same in every process for one seed."""

    sites: list[SiteSpec]
    slas: list[Sla]
    requests: list[DeploymentRequested]


def make_workload(options: Options) -> Workload:
    """The run's federation and requests, from ``options.seed``."""
    rng = random.Random(options.seed)
    sites = make_sites(options.sites, rng)
    slas = make_slas(sites, rng)
    return Workload(sites=sites, slas=slas, requests=make_requests(options.requests, rng))


async def run_scheduler(options: Options) -> RunResult:
    """The scheduler in this process; sites report, then the load side sends the requests.

    On RabbitMQ the load side (request publisher, capacity churn, command and event
    counters) runs in a child process, so its client work does not eat the scheduler's
    core; on the memory bus it shares this process.
    """
    workload = make_workload(options)
    names = bench_topology()
    timings = Timings()
    broker = MemoryBroker() if options.bus == "memory" else None

    def bus(name: str) -> RenamedBus:
        return _bus(options, names, name, broker)

    async with contextlib.AsyncExitStack() as stack:
        if broker is None:
            stack.push_async_callback(delete_topology, options.url, names.topology)
        store = await stack.enter_async_context(open_store(options.store))
        scheduler_bus = await stack.enter_async_context(bus("scheduler"))
        site_bus = await stack.enter_async_context(bus("sites"))
        await scheduler_bus.declare(names.topology)
        relay: Relay = OutboxRelay(store, scheduler_bus)
        if options.relay_process:
            from flotilla.scheduler.sql import SqlStore

            assert isinstance(store, SqlStore)  # not the memory store: see relay_process
            opener = partial(open_relay, options, names, store.url)
            relay = RelayProcess(opener, loop=options.loop)
        registry = WatchedRegistry(expected=len(workload.sites))
        placer = TimedPlacer(registry, workload.slas, timings=timings)
        service = SchedulerService(
            bus=scheduler_bus,
            store=store,
            lifecycle=TimedLifecycle(
                timings=timings,
                store=store,
                placer=placer,
                templates=FixedTemplates(make_templates()),
            ),
            placer=placer,
            relay=relay,
            verify_senders=False,  # every simulated site publishes with the one bench login
            prefetch=options.prefetch,
        )
        async with asyncio.TaskGroup() as tasks:
            running = tasks.create_task(service.run())
            try:
                await report_sites(site_bus, workload.sites, registry, options.concurrency)
                runtime.tune_collector()  # as the scheduler process does once it leads
                postgres = options.store == "postgresql"
                database = postgres_cpu() if postgres else None
                cpu, beam = time.process_time(), broker_cpu()
                relaying = relay_cpu(relay)
                commits = _commits(store)
                if broker is None:
                    load = await load_in_child(options, names)
                else:
                    portal, sinks = bus("portal"), bus("sinks")
                    async with portal, sinks:
                        outside = BusOutside(portal=portal, sinks=sinks)
                        load = await drive(options, names, outside=outside, sites=site_bus)
                cpu = time.process_time() - cpu
                relaying = _spent(relaying, relay_cpu(relay))
                beam = _spent(beam, broker_cpu())
                database = _spent(database, postgres_cpu() if postgres else None)
                commits = _commits(store, since=commits)
            finally:
                await service.shutdown()
            await running
    return RunResult(
        load=load,
        timings=timings,
        cpu=cpu,
        relay_cpu=relaying,
        broker_cpu=beam,
        database_cpu=database,
        commits=commits,
        slas=len(workload.slas),
    )


def _commits(store: Store, since: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """A SQL store's commits and their transactions so far (``since``: the difference)."""
    from flotilla.scheduler.sql import SqlStore

    if not isinstance(store, SqlStore):
        return None
    calls, batches = store.batching["commit"]
    if since is not None:
        calls, batches = calls - since[0], batches - since[1]
    return calls, batches


@contextlib.asynccontextmanager
async def open_relay(
    options: Options, names: BenchTopology, store_url: str
) -> AsyncIterator[OutboxRelay]:
    """The relay of the bench's ``RelayProcess``: the scheduler's, on the bench's names."""
    from flotilla.scheduler.sql import SqlStore

    configure_logging(LogSettings(level="warning"))
    async with (
        SqlStore(store_url, migrate=False) as store,
        _bus(options, names, "relay", None) as bus,
    ):
        yield OutboxRelay(store, bus, behind_after=BEHIND_AFTER)


def relay_cpu(relay: Relay) -> float | None:
    """CPU seconds used so far by a ``RelayProcess``'s child, if it has one."""
    pid = relay.pid if isinstance(relay, RelayProcess) else None
    if pid is None:
        return None
    with contextlib.suppress(psutil.Error):
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    return None


def broker_cpu() -> float | None:
    """CPU seconds used so far by a RabbitMQ on this machine (its Erlang VM), if there is one."""
    return processes_cpu("beam.smp")


def postgres_cpu() -> float | None:
    """CPU seconds used so far by a PostgreSQL on this machine, if there is one.

    With what the server's ended backends used (counted in their parent's children
    times), so a connection closed during the run is not missed.
    """
    return processes_cpu("postgres", children=True)


def processes_cpu(name: str, *, children: bool = False) -> float | None:
    """CPU seconds used so far by the processes called ``name``, if any runs.

    ``children`` adds what their ended children used.
    """
    total = None
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == name:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                spent = times.user + times.system
                if children:
                    spent += times.children_user + times.children_system
                total = (total or 0.0) + spent
    return total


def _spent(before: float | None, after: float | None) -> float | None:
    return after - before if after is not None and before is not None else None


def _bus(
    options: Options, names: BenchTopology, name: str, broker: MemoryBroker | None
) -> RenamedBus:
    policy = names.topology.policy
    inner: Bus = (
        MemoryBus(policy=policy, broker=broker)
        if broker is not None
        else RabbitBus(url=options.url, policy=policy, name=f"bench-{name}")
    )
    return RenamedBus(inner, names.names)


async def drive(
    options: Options, names: BenchTopology, *, outside: Outside, sites: Bus
) -> LoadResult:
    """Count commands and events, keep sites reporting, send every request, await the last."""
    workload = make_workload(options)
    tally = Tally(options.requests)
    await outside.count(names.commands, tally.command)
    await outside.count(names.events, tally.event)
    outside.prepare(workload.requests)
    async with asyncio.TaskGroup() as tasks:
        churn = tasks.create_task(keep_reporting(sites, workload.sites, options.churn))
        start, cpu = time.perf_counter(), time.process_time()
        await outside.send(options.concurrency, options.rate)
        published = time.perf_counter()
        async with asyncio.timeout(600):
            await tally.done.wait()
        churn.cancel()
    return LoadResult(
        elapsed=tally.last - start,
        publish_elapsed=published - start,
        provisions=tally.provisions,
        failures=tally.failures,
        events=tally.events,
        arrived=tally.arrived,
        cpu=time.process_time() - cpu,
    )


# --- The world outside the scheduler -------------------------------------------------------

Seen = Callable[[str, str], None]  # (routing key, deployment id) of a message that arrived


class Outside(Protocol):
    """Upstream services sending requests, and the sites and event consumers receiving."""

    async def count(self, queue: str, seen: Seen) -> None:
        """Report every message arriving on ``queue`` to ``seen``."""
        ...

    def prepare(self, requests: Sequence[DeploymentRequested]) -> None:
        """Get ``requests`` ready to send, before the clock starts."""
        ...

    async def send(self, concurrency: int, rate: float) -> None:
        """Send the prepared requests, ``concurrency`` unconfirmed at most, at ``rate`` per
        second (0: as fast as the broker confirms)."""
        ...


class BusOutside:
    """The outside world on a Flotilla ``Bus`` (the memory bus, in the scheduler's process)."""

    def __init__(self, *, portal: Bus, sinks: Bus) -> None:
        self._portal = portal
        self._sinks = sinks
        self._requests: Sequence[DeploymentRequested] = ()

    async def count(self, queue: str, seen: Seen) -> None:
        """Consume ``queue`` on the sinks bus."""

        async def handler(delivery: Delivery) -> None:
            seen(delivery.routing_key, json.loads(delivery.body)["correlationid"])

        await self._sinks.subscribe_raw(queue, handler, prefetch=512)

    def prepare(self, requests: Sequence[DeploymentRequested]) -> None:
        """Keep ``requests``; the bus encodes each as it publishes."""
        self._requests = requests

    async def send(self, concurrency: int, rate: float) -> None:
        """Publish through the portal bus."""
        await publish_bounded(self._portal, self._requests, concurrency, rate)


class WireOutside:
    """The outside world speaking AMQP with as little client work as it can.

    In a federation the upstream services, agents and event consumers run on machines of
    their own; here they share the two cores with the scheduler and the broker, so their
    client work is kept small: requests are encoded before the clock starts and published
    straight on aiormq's channel (persistent, mandatory, confirmed, with the properties
    ``RabbitBus`` sets), and the counting queues are read without building Flotilla
    deliveries, each ack ``multiple`` covering every delivery counted so far.
    """

    def __init__(self, url: str, names: Mapping[str, str]) -> None:
        self._url = url
        self._names = names
        self._user = urlsplit(url).username
        self._connection: AbstractRobustConnection | None = None
        self._prepared: list[tuple[bytes, Route, spec.Basic.Properties]] = []

    async def __aenter__(self) -> Self:
        self._connection = await connect_robust(self._url)  # as Flotilla's clients connect
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def count(self, queue: str, seen: Seen) -> None:
        """Consume ``queue`` on a channel of its own. The callback finishes deliveries in tag
        order, so one ``multiple`` ack covers all those seen; acks go one at a time, since
        aiormq's full frame buffer would let a later one overtake an earlier one."""
        assert self._connection is not None
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=512)
        wire = cast(aiormq.Channel, await channel.get_underlay_channel())
        highest = 0  # the highest tag seen
        sent = 0  # the highest tag acknowledged
        sending: asyncio.Task[None] | None = None

        async def acknowledge() -> None:
            nonlocal sending, sent
            while sent < highest:
                sent = highest
                await wire.basic_ack(sent, multiple=True)
            sending = None

        async def on_message(message: DeliveredMessage) -> None:
            nonlocal highest, sending
            seen(message.routing_key or "", message.header.properties.correlation_id or "")
            highest = message.delivery_tag or highest
            if sending is None:
                sending = asyncio.ensure_future(acknowledge())

        await wire.basic_consume(self._names.get(queue, queue), on_message)

    def prepare(self, requests: Sequence[DeploymentRequested]) -> None:
        """Encode every request with its AMQP properties."""
        self._prepared = [
            (
                encode(message),
                route(message),
                message_properties(message, user=self._user),
            )
            for message in requests
        ]

    async def send(self, concurrency: int, rate: float) -> None:
        """Publish the prepared requests; a refused or unroutable one fails the run."""
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        wire = cast(aiormq.Channel, await channel.get_underlay_channel())

        async def publish(prepared: tuple[bytes, Route, spec.Basic.Properties]) -> None:
            body, target, properties = prepared
            await wire.basic_publish(
                body,
                exchange=self._names[target.exchange],
                routing_key=target.routing_key,
                properties=properties,
                mandatory=True,
                wait=False,
            )

        await send_all(self._prepared, publish, concurrency, rate)


async def load_in_child(options: Options, names: BenchTopology) -> LoadResult:
    """Run ``drive`` over RabbitMQ in a child process and return what it measured."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.queues.Queue[LoadResult] = context.Queue()
    child = context.Process(target=_child, args=(options, names, results), name="bench-load")
    child.start()
    try:
        return await asyncio.to_thread(results.get, timeout=900)
    finally:
        await asyncio.to_thread(child.join, 30)


def _child(
    options: Options, names: BenchTopology, results: multiprocessing.queues.Queue[LoadResult]
) -> None:
    async def run() -> LoadResult:
        async with (
            WireOutside(options.url, names.names) as outside,
            _bus(options, names, "sites-churn", None) as sites,
        ):
            return await drive(options, names, outside=outside, sites=sites)

    configure_logging(LogSettings(level="warning"))
    results.put(runtime.run(run(), loop=options.loop))


@contextlib.asynccontextmanager
async def open_store(spec: str) -> AsyncIterator[Store]:
    """``memory``; ``sqlite`` (a temporary file); ``sqlite:///path`` to a new file; or
    ``postgresql`` (a new database on the local server, as its ``postgres`` user).

    The SQLite file (with its WAL), or the database, is deleted afterwards either way.
    """
    if spec == "memory":
        yield MemoryStore()
        return
    from flotilla.scheduler.sql import SqlStore, sqlite_path

    if spec == "postgresql":
        name = f"flotilla_bench_{uuid.uuid4().hex[:10]}"
        await _pg_admin(f'CREATE DATABASE "{name}"')
        try:
            async with SqlStore(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}") as store:
                yield store
        finally:
            await _pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)')
        return

    with tempfile.TemporaryDirectory(prefix="flotilla-bench-") as scratch:
        url = f"sqlite:///{scratch}/bench.db" if spec == "sqlite" else spec
        path = sqlite_path(url)
        if path is None or path.exists():
            raise SystemExit(f"--store must name a new SQLite file, not {spec!r}")
        try:
            async with SqlStore(url) as store:
                yield store
        finally:
            await asyncio.to_thread(_unlink_sqlite, path)


async def _pg_admin(statement: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def _unlink_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class WatchedRegistry(SiteRegistry):
    """A ``SiteRegistry`` that says when every expected site has reported its capacity."""

    def __init__(self, *, expected: int) -> None:
        super().__init__(grace=timedelta(0))
        self._waiting = expected
        self.complete = asyncio.Event()

    def apply_capacity(self, capacity: Capacity) -> bool:
        """Record a report, counting the sites heard from."""
        first = (view := self.get(capacity.site)) is None or view.capacity is None
        applied = super().apply_capacity(capacity)
        if applied and first:
            self._waiting -= 1
            if self._waiting <= 0:
                self.complete.set()
        return applied


async def report_sites(
    bus: Bus, sites: Sequence[SiteSpec], registry: WatchedRegistry, concurrency: int
) -> None:
    """Every site sends a lease and a capacity report; wait until the scheduler has them all."""
    rng = random.Random(1)
    messages = [m for site in sites for m in site_messages(site, 1, rng)]
    await publish_bounded(bus, messages, concurrency)
    async with asyncio.timeout(120):
        await registry.complete.wait()


async def keep_reporting(bus: Bus, sites: Sequence[SiteSpec], per_second: float) -> None:
    """Random sites send fresh capacity reports during the run, as live agents would."""
    if per_second <= 0:
        return
    rng = random.Random(2)
    sequences = dict.fromkeys((site.name for site in sites), 1)
    while True:
        await asyncio.sleep(1 / per_second)
        site = rng.choice(sites)
        sequences[site.name] += 1
        for message in site_messages(site, sequences[site.name], rng):
            await bus.publish(message, route(message))


async def publish_bounded(
    bus: Bus, messages: Sequence[Envelope], concurrency: int, rate: float = 0
) -> None:
    """Publish every message with at most ``concurrency`` unconfirmed at a time (and at
    ``rate`` per second, when given)."""

    async def publish(message: Envelope) -> None:
        await bus.publish(message, route(message))

    await send_all(messages, publish, concurrency, rate)


async def send_all(
    items: Sequence[T], send: Callable[[T], Awaitable[None]], concurrency: int, rate: float = 0
) -> None:
    """``send`` every item, at most ``concurrency`` at a time; with a ``rate``, item ``i`` no
    sooner than ``i / rate`` seconds after the start (an even offered load), else at once."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending = iter(enumerate(items))

    async def worker() -> None:
        for index, item in pending:
            if rate > 0 and (delay := start + index / rate - loop.time()) > 0:
                await asyncio.sleep(delay)
            await send(item)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())


# --- The bare broker, same run ------------------------------------------------------------


async def broker_round_trip(url: str, count: int, in_flight: int) -> float:
    """Messages per second through a fresh quorum queue with raw aio-pika: persistent,
    confirmed publishes (``in_flight`` unconfirmed at most), consumed with manual acks."""
    received = 0
    done = asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal received
        await message.ack()
        received += 1
        if received == count:
            done.set()

    body = b"x" * 400  # about the size of a small Flotilla envelope
    with aiormq_defaults():
        connection = await aio_pika.connect(url)
    async with connection:
        publisher = await connection.channel(publisher_confirms=True)
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=64)
        queue = await consumer.declare_queue(
            f"bench.{uuid.uuid4().hex[:10]}.raw", durable=True, arguments={"x-queue-type": "quorum"}
        )
        try:
            await queue.consume(on_message)
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            exchange = publisher.default_exchange
            pending = iter(range(count))

            async def worker() -> None:
                for _ in pending:
                    await exchange.publish(message, queue.name, mandatory=True)

            start = time.perf_counter()
            async with asyncio.TaskGroup() as group:
                for _ in range(in_flight):
                    group.create_task(worker())
            async with asyncio.timeout(120):
                await done.wait()
            return count / (time.perf_counter() - start)
        finally:
            await queue.delete(if_unused=False, if_empty=False)


# --- Report -------------------------------------------------------------------------------


def report(options: Options, result: RunResult, raw: tuple[float, float] | None) -> None:
    """Print the figures as a table."""
    load = result.load
    placed = load.provisions + load.failures
    decisions = result.timings.decisions
    rankings = result.timings.rankings
    window = result.timings.last - (result.timings.first or 0.0)
    outbox = (load.provisions + load.events) / placed
    decided = result.timings.decided
    lags = [at - decided[d] for d, at in load.arrived.items() if d in decided] or [0.0]
    rows: list[tuple[str, str]] = [
        (
            "placements/s (first request published -> last command received)",
            f"{placed / load.elapsed:,.0f}",
        ),
        (
            "  provision commands / deployments failed (no site fits)",
            f"{load.provisions:,} / {load.failures:,}",
        ),
        (
            "  elapsed; requests published/s",
            f"{load.elapsed:.2f} s; {options.requests / load.publish_elapsed:,.0f}",
        ),
        (
            "decisions/s inside the scheduler (first -> last decision)",
            f"{len(decisions) / window:,.0f}" if window > 0 else "-",
        ),
        (
            "decision latency p50 / p99 / max (Lifecycle.requested)",
            f"{_ms(percentile(decisions, 0.5))} / {_ms(percentile(decisions, 0.99))}"
            f" / {_ms(max(decisions))}",
        ),
        (
            "  of which Placer.rank p50 / p99",
            f"{_ms(percentile(rankings, 0.5))} / {_ms(percentile(rankings, 0.99))}",
        ),
        (
            "decision to command received p50 / p99 (outbox, relay, broker)",
            f"{_ms(percentile(lags, 0.5))} / {_ms(percentile(lags, 0.99))}",
        ),
        ("outbox messages published per placement (commands + events)", f"{outbox:.2f}"),
    ]
    if result.commits is not None:
        calls, batches = result.commits
        rows.append(
            (
                "SQL store: commits per transaction (group commit)",
                f"{calls / max(batches, 1):.1f} ({batches:,} transactions)",
            )
        )
    relaying = result.relay_cpu or 0.0
    if options.relay_process:
        rows += [
            (
                "scheduler process CPU per placement (consume, decide, commit)",
                f"{_ms(result.cpu / placed)}",
            ),
            (
                "  its relay process CPU per placement (read outbox, publish, remove)",
                f"{_ms(relaying / placed)}" if result.relay_cpu is not None else "-",
            ),
        ]
    else:
        rows.append(
            (
                "scheduler process CPU per placement (consume, decide, commit, relay)",
                f"{_ms(result.cpu / placed)}",
            )
        )
    rows.append(
        (
            "load process CPU per placement (publish, churn, count)",
            f"{_ms(load.cpu / placed)}" if options.bus == "rabbitmq" else "(in the above)",
        )
    )
    if options.bus == "rabbitmq" and result.broker_cpu is not None:
        machine = (result.cpu + relaying + load.cpu + result.broker_cpu) / placed
        cores = os.cpu_count() or 1
        rows += [
            ("broker (beam.smp) CPU per placement", f"{_ms(result.broker_cpu / placed)}"),
            ("  the processes above, CPU per placement", f"{_ms(machine)}"),
        ]
        if result.database_cpu is not None:
            machine += result.database_cpu / placed
            rows += [
                ("database (postgres) CPU per placement", f"{_ms(result.database_cpu / placed)}"),
                ("  with the database, CPU per placement", f"{_ms(machine)}"),
                (
                    f"  CPU ceiling: {cores} cores / CPU per placement",
                    f"{cores / machine:,.0f} placements/s",
                ),
            ]
        else:
            aside = " (database aside)" if options.store != "memory" else ""
            rows.append(
                (
                    f"  CPU ceiling: {cores} cores / CPU per placement{aside}",
                    f"{cores / machine:,.0f} placements/s",
                )
            )
    if raw is not None:
        pipelined, sequential = raw
        rows += [
            ("broker round trip, raw aio-pika, 64 confirms in flight", f"{pipelined:,.0f} msg/s"),
            (
                "broker round trip, raw aio-pika, 1 confirm in flight",
                f"{sequential:,.0f} msg/s ({_ms(1 / sequential)} each)",
            ),
            (
                "  broker ceiling: pipelined rate / outbox messages per placement",
                f"{pipelined / outbox:,.0f} placements/s",
            ),
        ]
    print(
        f"scheduler bench: {options.sites:,} sites, {result.slas:,} SLAs over {len(GROUPS)}"
        f" groups, {options.requests:,} requests, bus {options.bus}, store {options.store},"
        f" prefetch {options.prefetch}, capacity churn {options.churn:g}/s, loop {options.loop},"
        f" relay {'in a process of its own' if options.relay_process else 'in the scheduler'}"
    )
    if options.rate > 0:
        print(
            f"requests offered evenly at {options.rate:,.0f}/s: placements/s cannot exceed it;"
            " the question is whether the scheduler keeps up (see the latencies)"
        )
    print(
        "templates: a fixed TemplateSource hands out 5 prepared requirement variants;"
        " TOSCA parsing is not measured"
    )
    if options.store.startswith("sqlite"):
        print("SQLite runs in the scheduler process (aiosqlite's thread): its CPU is in that line")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value:>24}")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def main(options: Options) -> None:
    """Measure the bare broker, then the scheduler, and print the table."""
    configure_logging(LogSettings(level="warning"))
    raw = None
    if options.bus == "rabbitmq":
        raw = (
            await broker_round_trip(options.url, options.raw_count, 64),
            await broker_round_trip(options.url, max(options.raw_count // 10, 100), 1),
        )
    result = await run_scheduler(options)
    report(options, result, raw)


def parse() -> Options:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--bus", choices=("rabbitmq", "memory"), default="rabbitmq")
    parser.add_argument(
        "--store",
        default="memory",
        help="memory, sqlite (a temporary file), sqlite:///new.db, or postgresql (a new database)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="Publishes in flight.")
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="Requests offered per second, evenly (0: all at once, as fast as confirmed).",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        default=SchedulerSettings().prefetch,
        help="Scheduler consumer prefetch (default: the scheduler's own).",
    )
    parser.add_argument("--churn", type=float, default=20, help="Capacity reports per second.")
    parser.add_argument("--raw-count", type=int, default=10_000, help="Raw broker messages.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--relay",
        choices=("auto", "process", "inline"),
        default="auto",
        help=(
            "Publish the outbox from a child process or from the scheduler's own; auto: as"
            " the scheduler does by default, a child on PostgreSQL, its own on SQLite (and"
            " always its own with the memory store or bus)."
        ),
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="Event loop of every process of the run (the scheduler's default is uvloop).",
    )
    args = parser.parse_args()
    return Options(
        url=args.url,
        bus=args.bus,
        store=args.store,
        sites=args.sites,
        requests=args.requests,
        concurrency=args.concurrency,
        rate=args.rate,
        prefetch=args.prefetch,
        churn=args.churn,
        raw_count=args.raw_count,
        seed=args.seed,
        loop=args.loop,
        relay=args.relay,
    )


if __name__ == "__main__":
    options = parse()
    runtime.run(main(options), loop=options.loop)
