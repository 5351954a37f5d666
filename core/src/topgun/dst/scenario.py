"""One simulated run: the real server and real clients on virtual time, faults by seed.

`ScenarioRunner(Scenario(seed=...)).run()` starts a `topgun.server.Server` (in-memory
storage that outlives restarts) and `clients` `TopGunClient`s, each with its own in-memory
store, skewed virtual clock and RNG stream, connected through the `VirtualNetwork`. It then
performs `ops` random steps — LWW sets and removes, counter increments, lock rounds — and,
when the fault set allows, drops connections, partitions clients, and restarts the server
(gracefully, or as a crash that keeps only what storage committed). Finally it heals
everything, waits until every client has settled, and checks the invariants
(`topgun.dst.invariants`). Every choice comes from the seed, and time is virtual, so a seed
replays the same run, trace and all.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import anyio
import jwt
from anyio.abc import TaskGroup

from topgun.client import MemoryStore as ClientMemoryStore
from topgun.client import TopGunClient
from topgun.client.backoff import Backoff
from topgun.crdt import HLC, LWWRecord, Timestamp
from topgun.dst.bugs import injected
from topgun.dst.clock import EPOCH_MS, VirtualClock
from topgun.dst.faults import ALL_FAULTS, DEFAULT_FAULTS
from topgun.dst.invariants import InvariantChecker, Violation, WriteRecord
from topgun.dst.loop import SimulationDeadlock, run_virtual
from topgun.dst.network import LinkFaults, SimConnector, VirtualNetwork
from topgun.dst.rng import SeededRNG
from topgun.hooks import hookimpl, make_plugin_manager
from topgun.query import parse_query, run_query
from topgun.server import AuthConfig, Secret, ServerConfig, StorageConfig
from topgun.server.server import Server
from topgun.storage import MemoryBackend, MemoryStore

__all__ = ["ALL_FAULTS", "DEFAULT_FAULTS", "Scenario", "ScenarioRunner", "SimResult"]

SECRET: Final = "simulation-secret-" + "0" * 32
MAP: Final = "m"
ORMAP: Final = "o"
COUNTER: Final = "c"
LOCK: Final = "l"
KEYS: Final = 8
SETTLE_SECONDS: Final = 600.0
"""Virtual seconds the healed system has to settle before that is a liveness violation."""


@dataclass(frozen=True)
class Scenario:
    """What to simulate: the seed decides everything else."""

    seed: int
    clients: int = 3
    ops: int = 60
    faults: frozenset[str] = DEFAULT_FAULTS
    bug: str | None = None
    """A deliberately injected bug (`topgun.dst.bugs.BUGS`), to prove checks can fail."""

    def __post_init__(self) -> None:
        unknown = self.faults - ALL_FAULTS
        if unknown:
            known = ", ".join(sorted(ALL_FAULTS))
            raise ValueError(f"unknown fault(s) {', '.join(sorted(unknown))}; known: {known}")
        if self.clients < 1 or self.ops < 0:
            raise ValueError("clients must be >= 1 and ops >= 0")

    def replay_command(self) -> str:
        """The one-line command that replays this run."""
        parts = [
            f"topgun sim --seeds 1 --seed {self.seed} --clients {self.clients} --ops {self.ops}"
        ]
        if self.faults != DEFAULT_FAULTS:
            parts.append(f"--faults {','.join(sorted(self.faults)) or 'none'}")
        if self.bug is not None:
            parts.append(f"--bug {self.bug}")
        return " ".join(parts) + " --trace"


@dataclass
class SimResult:
    """A run's outcome: its trace and the invariants it violated."""

    scenario: Scenario
    trace: list[str]
    violations: list[Violation]
    virtual_seconds: float

    @property
    def ok(self) -> bool:
        return not self.violations

    def trace_digest(self) -> str:
        """SHA-256 of the trace: equal for runs that did exactly the same."""
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()


@dataclass
class _SimClient:
    name: str
    client: TopGunClient
    live: Any = None
    locking: bool = False
    """A lock round is in progress (one at a time per client)."""


class ScenarioRunner:
    """Runs one `Scenario` (see the module docstring)."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.rng = SeededRNG(scenario.seed)
        self.trace_lines: list[str] = []
        self.checker = InvariantChecker()
        faults = scenario.faults
        link = LinkFaults(
            min_latency_ms=1.0,
            max_latency_ms=80.0 if "latency" in faults else 1.0,
            loss=0.01 if "loss" in faults else 0.0,
            duplicate=0.02 if "duplicate" in faults else 0.0,
            reorder=0.02 if "reorder" in faults else 0.0,
        )
        self.network = VirtualNetwork(self.rng.fork("network"), link, self.trace)
        self.store = MemoryStore()
        self.server: Server | None = None
        self.restarts = 0
        self._restart = anyio.Event()
        self._crash = False
        self._stop = False
        self._server_up = anyio.Event()
        self._ids = 0
        self._last_token = 0
        self._tasks: TaskGroup | None = None
        self._downtime = self.rng.fork("downtime")

    # -- trace --------------------------------------------------------------------------

    def trace(self, line: str) -> None:
        """Append `line`, stamped with virtual time, to the run's trace."""
        self.trace_lines.append(f"{anyio.current_time():10.3f} {line}")

    # -- running ------------------------------------------------------------------------

    def run(self) -> SimResult:
        """Run the scenario on a virtual-time loop; never raises for what it finds."""
        with injected(self.scenario.bug), self._recording_clocks():
            return run_virtual(self._run)

    async def _run(self) -> SimResult:
        violations: list[Violation] = []
        try:
            async with anyio.create_task_group() as root:
                root.start_soon(self._serve)
                await self._server_up.wait()
                violations = await self._workload(root)
                self._stop = True
                self._restart.set()
            self.network.close()
        except SimulationDeadlock as deadlock:
            violations.append(Violation("deadlock", str(deadlock)))
        return SimResult(self.scenario, self.trace_lines, violations, anyio.current_time())

    # -- the server ---------------------------------------------------------------------

    def _plugin_manager(self) -> Any:
        runner = self

        class SimStorage:
            @hookimpl
            def register_storage(self, register: Any) -> None:
                register("sim", lambda config: MemoryBackend(store=runner.store))

        pm = make_plugin_manager(entry_points=(), environ={})
        pm.register(SimStorage(), name="sim-storage")
        return pm

    def _config(self) -> ServerConfig:
        return ServerConfig(
            node_id="sim-server",
            storage=StorageConfig(backend="sim"),
            auth=AuthConfig(jwt_secret=Secret(SECRET)),
        )

    async def _serve(self) -> None:
        clock = VirtualClock()
        while not self._stop:
            server = Server(self._config(), pm=self._plugin_manager(), clock=clock.wall_ms)
            server.make_id = self._next_id
            server.shutdown_grace_seconds = 2.0
            async with server, anyio.create_task_group() as sessions:

                def serve(pair: Any, sessions: Any = sessions, server: Server = server) -> None:
                    sessions.start_soon(
                        server.handle_connection, pair.server_end, pair.server_end.frames()
                    )

                self.server = server
                token = server.locks.last_token(LOCK)
                if token < self._last_token:
                    self.checker.fencing.append((LOCK, token))  # a token went back: recorded
                self.network.serve = serve
                self._server_up.set()
                await self._restart.wait()
                self._restart = anyio.Event()
                self._last_token = max(self._last_token, server.locks.last_token(LOCK))
                if self._crash:
                    # What storage committed is all that survives: the old server winds down
                    # against a store nobody reads again.
                    self.store = copy.deepcopy(self.store)
                    self.network.server_down()
                    sessions.cancel_scope.cancel()
                else:
                    self.network.serve = None
                    await server.shutdown()
                    self.network.server_down()
            self.server = None
            if not self._stop:
                await anyio.sleep(self._downtime.uniform(0.5, 3.0))  # restarting takes a while

    def _next_id(self) -> str:
        self._ids += 1
        return f"conn-{self._ids}"

    @contextlib.contextmanager
    def _recording_clocks(self) -> Iterator[None]:
        """Record every timestamp any HLC (server's, clients') issues during the run."""
        issue = HLC.now
        checker = self.checker

        incarnations: dict[int, str] = {}
        alive: list[HLC] = []  # keeps ids unique for the run

        def now(self: HLC) -> Timestamp:
            hlc = self
            stamp = issue(hlc)
            name = incarnations.get(id(hlc))
            if name is None:
                alive.append(hlc)
                same = sum(1 for other in alive if other.node_id == hlc.node_id)
                name = incarnations[id(hlc)] = f"{hlc.node_id} (process {same})"
            checker.stamped(name, stamp)
            return stamp

        HLC.now = now  # type: ignore[method-assign]
        try:
            yield
        finally:
            HLC.now = issue  # type: ignore[method-assign]

    async def _restart_server(self, crash: bool) -> None:
        self.restarts += 1
        self.trace(f"server {'crash' if crash else 'graceful restart'} #{self.restarts}")
        self._crash = crash
        self._server_up = anyio.Event()
        self._restart.set()
        await self._server_up.wait()
        self.trace("server up")

    # -- clients ------------------------------------------------------------------------

    def _token(self, name: str) -> str:
        claims = {"sub": name, "roles": ["ADMIN"], "exp": EPOCH_MS // 1000 + 30 * 86400}
        return jwt.encode(claims, SECRET, algorithm="HS256")

    def _client(self, index: int) -> _SimClient:
        name = f"client-{index}"
        skew = 0
        if "skew" in self.scenario.faults and self.rng.random() < 0.5:
            skew = self.rng.randint(-500, 500)  # the others keep exact time: ties happen
        client = TopGunClient(
            connector=SimConnector(self.network, name),
            token=self._token(name),
            store=ClientMemoryStore(),
            clock=VirtualClock(skew),
            rng=self.rng.fork(name),
            backoff=Backoff(initial=0.2, max_delay=5.0),
        )
        return _SimClient(name, client)

    async def _workload(self, root: Any) -> list[Violation]:
        scenario = self.scenario
        rng = self.rng.fork("workload")
        clients = [self._client(i) for i in range(scenario.clients)]
        async with contextlib.AsyncExitStack() as stack:
            for sim in clients:
                await stack.enter_async_context(sim.client)
            self._tasks = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._tasks.cancel_scope.cancel)
            for sim in clients:
                sim.live = sim.client.query(MAP, {"n": {"$gte": 50}})
                sim.client.counter(COUNTER)  # every replica follows the counter
                sim.client.ormap(ORMAP)  # and holds the OR-Map
            for step in range(scenario.ops):
                await anyio.sleep(rng.expovariate(20.0))
                await self._step(step, rng, clients, root)
            return await self._finish(clients)

    async def _step(self, step: int, rng: SeededRNG, clients: list[_SimClient], root: Any) -> None:
        sim = rng.choice(clients)
        roll = rng.random()
        faults = self.scenario.faults
        if roll < 0.45:
            key = f"k{rng.randrange(KEYS)}"
            value = {"n": rng.randrange(100), "by": sim.name, "step": step}
            self._write(sim, key, value)
        elif roll < 0.55:
            # Concurrent writers: several clients write one key at the same instant.
            key = f"k{rng.randrange(KEYS)}"
            for other in rng.sample(clients, min(len(clients), 2)):
                self._write(other, key, {"n": rng.randrange(100), "by": other.name, "step": step})
        elif roll < 0.62:
            self._write(sim, f"k{rng.randrange(KEYS)}", None)
        elif roll < 0.70:
            self._or_step(sim, rng, step)
        elif roll < 0.80:
            by = rng.randint(1, 5)
            sim.client.counter(COUNTER).increment(by)
            self.checker.increments += by
            self.trace(f"{sim.name} counter +{by}")
        elif roll < 0.85:
            if not sim.locking:
                sim.locking = True
                root.start_soon(self._lock_round, sim, rng.uniform(0.01, 0.5))
        elif roll < 0.90 and "drop" in faults:
            self.trace(f"fault: drop {sim.name}")
            self.network.drop_all(sim.name)
        elif roll < 0.94 and "partition" in faults:
            self.network.partition(sim.name)
            root.start_soon(self._heal_later, sim.name, rng.uniform(0.5, 30.0))
        elif roll < 0.96 and "restart" in faults and self.restarts < 3:
            await self._restart_server(crash="crash" in faults and rng.random() < 0.5)

    def _or_step(self, sim: _SimClient, rng: SeededRNG, step: int) -> None:
        """Add a value under an OR-Map key, or remove one the client sees there."""
        tags = sim.client.ormap(ORMAP)
        key = f"t{rng.randrange(4)}"
        held = tags.values(key)
        if held and rng.random() < 0.4:
            gone = rng.choice(held)
            tags.remove(key, gone)
            self.trace(f"{sim.name} or-remove {key}={gone}")
        else:
            added = f"{sim.name}-{step}"
            tags.add(key, added)
            self.trace(f"{sim.name} or-add {key}={added}")

    def _write(self, sim: _SimClient, key: str, value: Any) -> None:
        handle_map = sim.client.map(MAP)
        handle = (
            handle_map.remove(key, "PERSISTED")
            if value is None
            else handle_map.set(key, value, write_concern="PERSISTED")
        )
        record = handle_map.get_record(key)
        assert record is not None
        write = WriteRecord(sim.name, MAP, key, record)
        self.checker.wrote(write)
        self.trace(
            f"{sim.name} {'remove' if value is None else 'set'} {key}={value} @{record.timestamp}"
        )

        async def acked() -> None:
            try:
                await handle
            except Exception:
                return
            self.checker.acknowledged(write)

        self._spawn(acked)

    def _spawn(self, func: Callable[[], Any]) -> None:
        assert self._tasks is not None
        self._tasks.start_soon(func)

    async def _lock_round(self, sim: _SimClient, hold: float) -> None:
        try:
            await self._hold_lock(sim, hold)
        finally:
            sim.locking = False

    async def _hold_lock(self, sim: _SimClient, hold: float) -> None:
        lock = sim.client.lock(LOCK, ttl_ms=5_000)
        with anyio.move_on_after(20.0):
            try:
                token = await lock.acquire()
            except Exception as exc:
                self.trace(f"{sim.name} lock failed: {type(exc).__name__}")
                return
            self.checker.fencing.append((LOCK, token))
            self.trace(f"{sim.name} lock granted token {token}")
            await anyio.sleep(hold)
            try:
                await lock.release()
            except Exception as exc:
                self.trace(f"{sim.name} unlock failed: {type(exc).__name__}")

    async def _heal_later(self, name: str, after: float) -> None:
        await anyio.sleep(after)
        self.network.heal(name)

    async def _finish(self, clients: list[_SimClient]) -> list[Violation]:
        self.trace("heal: faults off, partitions healed")
        self.network.faults = LinkFaults(min_latency_ms=1.0, max_latency_ms=5.0)
        for name in sorted(self.network.partitioned):
            self.network.heal(name)
        if self.scenario.faults & {"reorder", "duplicate"}:
            # The protocol relies on ordered frames (a subscription made before a sync sees
            # every change): after frames were reordered, a reconnect over a sane network
            # (a Merkle sync) is what restores that.
            self.trace("heal: reconnect everyone over ordered frames")
            self.network.drop_all()
        violations: list[Violation] = []
        with anyio.move_on_after(SETTLE_SECONDS) as scope:
            for sim in clients:
                await sim.client.settled()
                await sim.client.map(MAP).synced()
            await anyio.sleep(1.0)  # let the last events and counter updates land
        if scope.cancelled_caught:
            pending = {sim.name: _unsettled(sim.client) for sim in clients}
            violations.append(
                Violation("liveness", f"not settled after {SETTLE_SECONDS} s: {pending}")
            )
        self.trace("settled")
        server = self.server
        assert server is not None
        server_lww = server.maps.lww(MAP)
        server_maps = {MAP: dict(server_lww.records()) if server_lww is not None else {}}
        client_maps = {
            sim.name: {MAP: dict(sim.client.map(MAP)._lww().records())} for sim in clients
        }
        server_or = server.maps.ormap(ORMAP)
        held_keys = server_or.keys() if server_or is not None else []
        server_sets = {key: server_or.values(key) for key in held_keys} if server_or else {}
        client_sets = {sim.name: dict(sim.client.ormap(ORMAP).items()) for sim in clients}
        query = parse_query({"where": {"n": {"$gte": 50}}})
        views = []
        # A live view follows QUERY_UPDATEs in the order they arrive; a stream transport
        # never reorders or repeats them, so under those frame faults the view is exact
        # only after a resubscription: the check applies to the other faults.
        exact_views = not self.scenario.faults & {"reorder", "duplicate"}
        for sim in clients if exact_views else []:
            rows = [(k, v) for k, v in sim.client.map(MAP).items()]
            fresh = sorted(run_query(query, rows, now_ms=0).rows)
            live = sorted(sim.live.items()) if sim.live is not None else fresh
            views.append((sim.name, "n >= 50", live, fresh))
        violations += self.checker.check(
            server_maps=server_maps,
            client_maps=client_maps,
            server_counter=server.counters.value(COUNTER),
            client_counters={sim.name: sim.client.counter(COUNTER).value for sim in clients},
            live_views=views,
            server_sets=server_sets,
            client_sets=client_sets,
        )
        for line in _state_lines(server_maps):
            self.trace(line)
        return violations


def _unsettled(client: TopGunClient) -> str:
    """What keeps `client` from settling: its state, unacked writes, maps still syncing."""
    engine = client._engine
    syncing = [name for name, ms in engine.maps.items() if ms.open and not ms.synced.is_set()]
    return f"{client.state.value}, {client.pending_writes} unacked, syncing {syncing}"


def _state_lines(maps: dict[str, dict[str, LWWRecord]]) -> list[str]:
    return [
        f"final {name}/{key} = {record.value!r} @{record.timestamp}"
        for name, records in sorted(maps.items())
        for key, record in sorted(records.items())
    ]
