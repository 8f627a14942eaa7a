"""The deployment topology without a container engine: network namespaces on a private bridge.

One bridge on a private /24 that nobody else uses, one namespace per role (the nginx edge,
each API, the job processes), each joined to the bridge by a veth pair whose inner end is
`eth0`, as in a container. PostgreSQL and Redis run in the host namespace on the bridge's own
address: the APIs reach them over the bridge the way containers reach `db` and `redis`, and the
test process reaches them on loopback for setup, with the session's tried server helpers.

Everything made is recorded with the command that undoes it, and `Topology.down` runs those in
reverse whatever failed: processes by PID, namespaces, the bridge, /etc/netns folders and the
iptables rule. Names carry the test process's PID, so a leftover of a killed run never collides.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis

from tests.support.processes import tail
from tests.support.servers import PostgresServer, RedisServer, require_server
from tests.support.waiting import eventually

NETNS_ETC = Path("/etc/netns")
COMMAND_TIMEOUT_SECONDS = 10.0
STOP_DEADLINE_SECONDS = 15.0
# Topologies up now: a failing test's report gets their daemons' logs (see conftest.py).
LIVE: list[Topology] = []


def require_root_and_tools() -> None:
    """Skip (fail under CI=true) when this machine cannot build the topology."""
    if os.geteuid() != 0:
        require_server("the namespace topology needs root (network namespaces, a bridge)")
    for tool in ("ip", "nginx", "iptables", "ss"):
        if shutil.which(tool) is None:
            require_server(f"`{tool}` is not on PATH (apt-get install iproute2 nginx iptables)")


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): {(result.stdout + result.stderr)}"
        )
    return result


ROLE_PATTERN = re.compile(r"^(?:edge|api1|api2|jobs)-(\d+)$")
BRIDGE_PATTERN = re.compile(r"^apptest(\d+)$")


def _dead(pid: str) -> bool:
    return not Path(f"/proc/{pid}").exists()


def sweep_leftovers() -> list[str]:
    """Remove what a run that was itself killed (SIGKILL, OOM) could not: namespaces, bridges,
    /etc/netns folders and FORWARD rules named after a PID that no longer runs."""
    removed: list[str] = []
    for line in run(["ip", "netns", "list"]).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        found = ROLE_PATTERN.match(name)
        if found and _dead(found.group(1)):
            run(["ip", "netns", "del", name], check=False)
            removed.append(f"netns {name}")
    if NETNS_ETC.is_dir():
        for path in NETNS_ETC.iterdir():
            found = ROLE_PATTERN.match(path.name)
            if found and _dead(found.group(1)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(str(path))
    for line in run(["ip", "-o", "link", "show", "type", "bridge"]).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        found = BRIDGE_PATTERN.match(name)
        if found and _dead(found.group(1)):
            run(["ip", "link", "del", name], check=False)
            removed.append(f"bridge {name}")
    for rule in run(["iptables", "-w", "5", "-S", "FORWARD"]).stdout.splitlines():
        found = re.search(r"-i (apptest(\d+)) -o \1 -j ACCEPT", rule)
        if rule.startswith("-A ") and found and _dead(found.group(2)):
            run(["iptables", "-w", "5", "-D", *rule.split()[1:]], check=False)
            removed.append(f"iptables {rule}")
    return removed


def _free_subnet(start: int) -> ipaddress.IPv4Network:
    """A 10.213.N.0/24 that overlaps no address or route of this machine."""
    used = [
        ipaddress.ip_network(line.split()[0], strict=False)
        for line in run(["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines()
        if line and line.split()[0][0].isdigit()
    ]
    for offset in range(250):
        candidate = ipaddress.IPv4Network(f"10.213.{(start + offset) % 250 + 1}.0/24")
        if not any(candidate.overlaps(net) for net in used if net.prefixlen > 0):
            return candidate
    raise RuntimeError("no free 10.213.N.0/24 for the test bridge")


@dataclass
class Namespace:
    name: str
    address: str  # on the bridge
    veth: str  # the host end; the namespace's end is eth0

    def argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def link(self, *, up: bool) -> None:
        """Bring the namespace's own end of its cable up or down: a network partition."""
        run(["ip", "-n", self.name, "link", "set", "eth0", "up" if up else "down"])

    def passive_opens(self) -> int:
        """TCP connections accepted in this namespace so far (its own /proc/net/snmp)."""
        lines = [
            line.split()
            for line in run(self.argv("cat", "/proc/net/snmp")).stdout.splitlines()
            if line.startswith("Tcp:")
        ]
        header, values = lines[0], lines[1]
        return int(values[header.index("PassiveOpens")])


@dataclass
class Daemon:
    """A process started in a namespace, in a process group of its own, logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = None

    def start(self) -> None:
        self._out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.log.parent,  # no stray .env from the repository
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # `ip netns exec` execs: this PID is the daemon's own
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Signal, wait, then SIGKILL the whole group after a deadline. Idempotent."""
        if self.alive():
            self.send(sig)
        return self.reap(time.monotonic() + STOP_DEADLINE_SECONDS)

    def reap(self, deadline: float) -> int | None:
        """Wait for an exit already asked for; SIGKILL the group at the deadline."""
        proc = self.proc
        if proc is None:
            return None
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # Children left in the group (a pool, a forked worker) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._out is not None:
            self._out.close()
            self._out = None
        return proc.returncode

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        state = "not started"
        if self.proc is not None:
            code = self.proc.poll()
            state = "running" if code is None else f"exit code {code}"
        return f"{self.name} (pid {self.proc.pid if self.proc else '-'}, {state})\n{tail(self.log)}"


@dataclass
class Topology:
    """The bridge, the namespaces and the undo log; `down` leaves nothing behind."""

    work_dir: Path
    suffix: str = field(default_factory=lambda: str(os.getpid()))
    network: ipaddress.IPv4Network = field(init=False)
    bridge: str = field(init=False)
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    daemons: list[Daemon] = field(default_factory=list)
    _undo: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.network = _free_subnet(int(self.suffix))
        self.bridge = f"apptest{self.suffix}"[:15]

    @property
    def host_address(self) -> str:
        return str(self.network[1])

    def _did(self, what: str, undo: Callable[[], object]) -> None:
        self._undo.append((what, undo))

    def up(self, roles: Sequence[str]) -> None:
        LIVE.append(self)
        self._did("registration", lambda: LIVE.remove(self))
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._did(f"bridge {self.bridge}", lambda: run(["ip", "link", "del", self.bridge]))
        run(["ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        # dockerd leaves FORWARD on DROP with bridge-nf-call-iptables: bridged frames between
        # two namespaces would vanish. Accept ours, first, and take the rule out afterwards.
        rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        run(["iptables", "-w", "5", "-I", *rule])
        self._did("iptables rule", lambda: run(["iptables", "-w", "5", "-D", *rule]))
        for index, role in enumerate(roles, start=2):
            self._add_namespace(role, str(self.network[index]), index)

    def _add_namespace(self, role: str, address: str, index: int) -> None:
        name = f"{role}-{self.suffix}"
        veth = f"vt{self.suffix}x{index}"[:15]
        run(["ip", "netns", "add", name])
        self._did(f"netns {name}", lambda: run(["ip", "netns", "del", name]))
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name])
        self._did(f"veth {veth}", lambda: run(["ip", "link", "del", veth], check=False))
        run(["ip", "link", "set", veth, "master", self.bridge, "up"])
        run(["ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0"])
        run(["ip", "-n", name, "link", "set", "eth0", "up"])
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        self.namespaces[role] = Namespace(name, address, veth)

    def add_host_address(self, index: int) -> str:
        """One more address of the host on the bridge: a second client, with its own IP."""
        address = str(self.network[index])
        run(["ip", "addr", "add", f"{address}/24", "dev", self.bridge])
        self._did(f"address {address}", lambda: run(["ip", "addr", "del", f"{address}/24",
                                                     "dev", self.bridge], check=False))  # fmt: skip
        return address

    def etc_dir(self, role: str) -> Path:
        """/etc/netns/<ns>: what `ip netns exec` bind-mounts over /etc entries in there."""
        path = NETNS_ETC / self.namespaces[role].name
        path.mkdir(parents=True, exist_ok=False)
        self._did(f"{path}", lambda: shutil.rmtree(path))
        return path

    def daemon(self, role: str | None, name: str, argv: list[str], env: dict[str, str]) -> Daemon:
        """Start `argv` in the role's namespace (the host's when None); stopped by `down`."""
        command = self.namespaces[role].argv(*argv) if role is not None else argv
        daemon = Daemon(name, command, env, self.work_dir / f"{name}.log")
        daemon.start()
        self.daemons.append(daemon)
        return daemon

    def down(self) -> list[str]:
        """Stop every daemon, then undo everything in reverse; the problems met, if any."""
        problems: list[str] = []
        # All at once: each takes its own time to stop, and the module's budget is 60 s.
        for daemon in self.daemons:
            if daemon.alive():
                daemon.send(signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE_SECONDS
        for daemon in reversed(self.daemons):
            try:
                daemon.reap(deadline)
            except Exception as exc:  # keep tearing down: a leftover is worse than a message
                problems.append(f"stopping {daemon.name}: {exc}")
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:
                problems.append(f"removing {what}: {exc}")
        return problems


class BridgedPostgres(PostgresServer):
    """PostgreSQL on loopback and on the bridge's address, trusting the bridge's /24."""

    def __init__(self, address: str, network: str) -> None:
        super().__init__()
        self.address = address
        self.network = network

    def _start_on_free_port(self, bin_dir: Path) -> None:
        # Later lines win in postgresql.conf; pg_hba is read top down and ends with ours.
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1,{self.address}'\n")
        with (self.data_dir / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.network} trust\n")
        super()._start_on_free_port(bin_dir)

    def bridged_url(self, database: str) -> str:
        return f"postgresql://postgres@{self.address}:{self.port}/{database}"


class BridgedRedis(RedisServer):
    """redis-server on loopback and, once up, on the bridge's address too (Redis 7 rebinds
    at runtime), so the shared helper starts it unchanged. Off loopback Redis wants a
    password (protected mode), as it should on any shared network."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self.password = secrets.token_hex(16)

    def start(self) -> None:
        super().start()
        with redis.Redis.from_url(self.url) as client:
            client.config_set("bind", f"127.0.0.1 {self.address}")
            client.config_set("requirepass", self.password)

    def bridged_url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@{self.address}:{self.port}/{db}"

    def loopback_url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"


def wait_for(
    condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll `condition` until true; seconds it took. Raises with `what` after `timeout`."""
    started = time.monotonic()
    eventually(condition, timeout=timeout, what=what, interval=interval)
    return time.monotonic() - started
