"""``daemon-reexec``: the manager replaces its own code and carries on with everything.

The old manager waits until nothing is in flight (no relay, no command or hook,
no unit between states that have no deadline of their own), takes its state
(``wire.state``) into a sealed memfd, asks the new binary to check it
(``NEW --check-state 3`` in a child: a refusal cancels and says why), takes
the state again (the check took a while; from here to ``exec`` nothing awaits)
and ``exec``s ``NEW --resume-state FD``, keeping only the fds the state names.

The new manager is the same process (as PID 1 it stays PID 1, its children
stay its children): it adopts every unit as it was, with its process, its
deadline, its listeners (never re-bound), its fd store, its SRP channels and
checkpoint and its output pipes. What happened during the window is still
queued: a child that exited is a zombie for the first reap, a notify datagram
waits in the socket's queue, a control client in the listen backlog. The
client that asked for the re-exec gets its answer from the new manager.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..linux import handover, output, proc
from ..results import ExitInfo, Result
from ..unit.states import RUNNING_STATES, Event, State, Want
from ..unit.watchdog import Notified

if TYPE_CHECKING:
    from ..wire.state import ManagerState
    from .manager import Manager

# States a unit may be adopted in: settled, or waiting on a deadline that the
# state carries. Anything else (a command running, stopping) is waited out.
QUIET = frozenset({State.INACTIVE, State.FAILED, State.ACTIVE, State.EXITED, State.STARTING,
                   State.AUTO_RESTART})
QUIET_TIMEOUT = 30.0  # s to wait for a relay or a stop to finish
CHECK_TIMEOUT = 15.0  # s for the new binary to check the state


class Refused(Exception):
    """The re-exec did not happen; the message says why. The old manager runs on."""


@dataclass
class Identity:
    """Who this manager is across re-execs (``aeterna status``)."""

    control_path: str = ""
    log_level: str = "info"
    started_wall: float = field(default_factory=time.time)
    reexecs: int = 0
    last_reexec_wall: float | None = None
    previous_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        from .. import __version__

        return {"version": __version__, "started": round(self.started_wall, 3),
                "reexecs": self.reexecs,
                "last_reexec": (round(self.last_reexec_wall, 3)
                                if self.last_reexec_wall is not None else None),
                "previous_version": self.previous_version}


class Reexec:
    """One manager's re-exec: refuses a second one while one runs."""

    def __init__(self, manager: Manager):
        self.m = manager
        self.identity = Identity()
        self.running = False

    def busy(self) -> str | None:
        """Why the state cannot be taken now (None: it can)."""
        m = self.m
        if m.shutting_down:
            return "the manager is shutting down"
        if m.relays is not None and m.relays.active():
            return "a relay is in progress"
        for r in m.units.values():
            if r.state not in QUIET:
                return f"{r.name} is {r.state.value}"
            if r.command_pid is not None:
                return f"{r.name} runs a command"
        if m.reaper.watched:
            return "a hook, probe or command is running"
        for name, srp in m.srp.items():
            if any(c.waiters for c in srp.channels.values()):
                return f"{name} has an SRP request in flight"
        return None

    async def run(self, exec_path: str | None, reply_fd: int | None) -> None:
        """Re-exec, or raise Refused. Returns never on success (the process is replaced)."""
        if self.running:
            raise Refused("a re-exec is already in progress")
        self.running = True
        try:
            path = resolve(exec_path)
            if not await self.m.wait_for(lambda: self.busy() is None, QUIET_TIMEOUT):
                raise Refused(f"still busy after {QUIET_TIMEOUT:.0f}s: {self.busy()}")
            from ..wire.state import encode

            fd = handover.seal_state(encode(capture(self.m, reply_fd)))
            try:
                await self._check(path, fd)
            finally:
                os.close(fd)
            # The check took a while and things moved: take the state again, and
            # from here to exec nothing awaits, so nothing can change under us.
            why = self.busy()
            if why is not None:
                raise Refused(f"became busy during the check: {why}")
            state = capture(self.m, reply_fd)
            fd = handover.seal_state(encode(state))
            keep = [fd, *state.fds()]
            self.m.log.info("manager.reexec", path=path, units=len(state.units), fds=len(keep))
            err = handover.exec_keeping(path, [path, "--resume-state", str(fd)], keep)
            os.close(fd)
            raise Refused(f"exec {path}: {err.strerror}")
        finally:
            self.running = False

    async def _check(self, path: str, fd: int) -> None:
        m = self.m
        try:
            pid, out = handover.spawn_check(path, fd)
        except OSError as exc:
            raise Refused(f"{path}: {exc.strerror}") from None
        assert m.loop is not None
        done: asyncio.Future[ExitInfo] = m.loop.create_future()
        m.reaper.watch(pid, lambda info: None if done.done() else done.set_result(info))
        try:
            info = await asyncio.wait_for(asyncio.shield(done), CHECK_TIMEOUT)
        except TimeoutError:
            proc.kill_group(pid, signal.SIGKILL)
            await asyncio.wait_for(done, 5.0)
            handover.read_output(out)
            raise Refused(f"{path} --check-state did not answer within "
                          f"{CHECK_TIMEOUT:.0f}s") from None
        said = handover.read_output(out)
        if info.code != 0:
            raise Refused(f"{path} refused the state ({info}): {said or 'it said nothing'}")


def resolve(exec_path: str | None) -> str:
    """The binary to exec: ``--exec PATH``, else the ``aeterna`` on PATH now."""
    path = exec_path or shutil.which("aeterna")
    if not path:
        raise Refused("no aeterna on PATH (give one with --exec PATH)")
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK) or os.path.isdir(path):
        raise Refused(f"{path}: not an executable file")
    return path


# --------------------------------------------------------------------------- taking the state
def capture(m: Manager, reply_fd: int | None) -> ManagerState:
    """Everything that must outlive this process, with the fds it is held in."""
    from .. import __version__
    from ..wire import state as sw

    units = []
    for r in m.units.values():
        timer = r._timer is not None  # noqa: SLF001 - the unit's one deadline
        srp = m.srp.get(r.name)
        units.append(sw.Unit(
            name=r.name, state=r.state.value, result=r.result.value, want=r.want.value,
            main_pid=r.main_pid, pgid=r.pgid, generation=r.generation,
            last_generation=r.last_generation, restarts=r.restarts,
            restart_attempt=r.restart_attempt, started_at=r.started_at,
            deadline=r._deadline if timer else None,  # noqa: SLF001
            timer_event=r._timer_event.value,  # noqa: SLF001
            exit_code=r.last_exit.code if r.last_exit else None,
            exit_signal=r.last_exit.signal if r.last_exit else None,
            status_text=r.notified.status,
            listeners=tuple(sw.Named(lst.spec.name, lst.fd) for lst in r.listeners
                            if lst.fd >= 0),
            fdstore=tuple(sw.Named(e.name, e.fd) for e in r.fdstore.entries)
            if r.fdstore is not None else (),
            srp=None if srp is None else sw.Srp(
                seq=srp.seq,
                channels=tuple(sw.Channel(c.generation, c.sock.fileno(), c.asked)
                               for c in srp.channels.values() if not c.closed),
                latest=None if srp.latest is None else sw.Checkpoint(
                    srp.latest.generation, tuple(srp.latest.fields.items()),
                    tuple(srp.latest.fds)))))
    pipes = tuple(sw.Pipe(fd, relay.prefix.decode(errors="replace"),
                          "err" if relay.sink is sys.stderr.buffer else "out", relay.partial)
                  for fd, relay in output.LIVE.items())
    ident = m.reexec.identity
    return sw.ManagerState(
        aeterna_version=__version__, pid=os.getpid(), paths=tuple(m.paths),
        control_path=ident.control_path, runtime_dir=m.runtime_dir,
        log_level=ident.log_level, notify_path=m.notify.path, notify_fd=m.notify.fileno(),
        control_fd=m.surfaces.control_fd() if m.surfaces is not None else -1,
        taken_at=time.monotonic(), started_wall=ident.started_wall, reexecs=ident.reexecs,
        last_reexec_wall=ident.last_reexec_wall, reply_fd=reply_fd, units=tuple(units),
        pipes=pipes, counters=tuple(_counters(m).items()))


def _counters(m: Manager) -> dict[str, int]:
    """The values behind /metrics that belong to the manager, not to a unit."""
    out = {"notify_accepted": m.notify.accepted, "orphans_reaped": m.reaper.orphans,
           "internal_errors": m.faults.count}
    for reason, n in m.notify.rejected.items():
        out[f"notify_rejected\x1f{reason}"] = n
    if m.relays is not None:
        out["relays"] = m.relays.count
        for key, n in m.relays.outcomes.items():
            out["relay_outcome\x1f" + "\x1f".join(key)] = n
        for hkey, n in m.relays.handoffs.items():
            out["srp_handoff\x1f" + "\x1f".join(hkey)] = n
    return out


# --------------------------------------------------------------------------- resuming
def open_notify(m: Manager, state: ManagerState) -> None:
    """The notify socket as it was: same node, same fd, its queue unread."""
    from .notify_endpoint import NotifyEndpoint

    assert m.loop is not None
    m.notify = NotifyEndpoint(state.notify_path, m.log, m.pids, adopt_fd=state.notify_fd)
    m.loop.add_reader(m.notify.fileno(), m._on_notify)  # noqa: SLF001


def adopt_units(m: Manager, state: ManagerState) -> list[str]:
    """Every unit of the state, as it was; returns the units new in the files (to start)."""
    from ..linux.sockets import SocketError, bind_listener

    assert m.loop is not None
    now = time.monotonic()
    carried = {u.name for u in state.units}
    for u in state.units:
        r = m.units.get(u.name)
        if r is None:  # --check-state refuses this; never leave its fds open anyway
            _close(state_fds_of(u))
            m.log.warning("reexec.unit-gone", unit=u.name, pid=u.main_pid)
            continue
        r.state, r.result, r.want = State(u.state), Result(u.result), Want(u.want)
        r.main_pid, r.pgid = u.main_pid, u.pgid
        r.generation, r.last_generation = u.generation, u.last_generation
        r.restarts, r.restart_attempt, r.started_at = u.restarts, u.restart_attempt, u.started_at
        if u.exit_code is not None or u.exit_signal is not None:
            r.last_exit = ExitInfo(code=u.exit_code, signal=u.exit_signal)
        r.notified = Notified(status=u.status_text)
        specs = list(r.spec.service.sockets)
        for spec, n in zip(specs, u.listeners, strict=False):
            r.listeners.append(handover_listener(spec, n.fd))
        _close([n.fd for n in u.listeners[len(specs):]])
        for spec in specs[len(u.listeners):]:  # added to the unit file since the last start
            try:
                r.listeners.append(bind_listener(spec))
            except SocketError as exc:
                m.log.warning("unit.bind-failed", unit=r.name, error=str(exc))
        if r.fdstore is not None:
            m.loop.add_reader(r.fdstore.epoll_fd(), m._on_fdstore, r)  # noqa: SLF001
            for n in u.fdstore:
                r.fdstore.add(n.fd, n.name, poll=True)
        else:
            _close([n.fd for n in u.fdstore])
        _adopt_srp(m, r, u)
        if u.deadline is not None:
            r.arm(max(0.0, u.deadline - now), Event(u.timer_event))
        if r.state in RUNNING_STATES:
            r.watchdog.arm(r.watchdog_usec())
        if r.main_pid is not None:
            m.watch_foreign(r, r.main_pid)  # a MAINPID= that is not our child
        m.changed(r)
        m.log.info("unit.adopted", unit=r.name, state=r.state.value, pid=r.main_pid,
                   generation=r.generation, listeners=len(u.listeners))
    for p in state.pipes:
        relay = output.LineRelay(m.loop, p.fd, p.prefix,
                                 sys.stderr.buffer if p.stream == "err" else sys.stdout.buffer)
        relay.partial = p.partial
    _restore_counters(m, dict(state.counters))
    ident = m.reexec.identity
    ident.started_wall, ident.reexecs = state.started_wall, state.reexecs + 1
    ident.last_reexec_wall, ident.previous_version = time.time(), state.aeterna_version
    return [n for n in m.units if n not in carried]


def handover_listener(spec: Any, fd: int) -> Any:
    """A listener the previous manager bound, as a ``Listener`` again (never re-bound)."""
    from ..linux.sockets import Listener
    from ..model import SocketType
    from ..wire.address import parse_address

    address = parse_address(spec.address, spec.type)
    sock = None if spec.type is SocketType.FIFO else socket.socket(fileno=fd)
    node = None
    if address.family == socket.AF_UNIX and address.display.startswith("/"):
        try:
            st = os.lstat(address.display)
            node = (st.st_dev, st.st_ino)
        except OSError:
            pass
    return Listener(spec, address, sock, fd, node)


def _adopt_srp(m: Manager, r: Any, u: Any) -> None:
    if u.srp is None:
        return
    srp = m.srp_for(r, r.spec)
    if srp is None:  # SRP switched off in the files since: nothing to talk to
        _close([c.fd for c in u.srp.channels] + list(u.srp.latest.fds if u.srp.latest else ()))
        return
    for c in u.srp.channels:
        srp.adopt_channel(c.generation, c.fd, c.asked)
    if u.srp.latest is not None:
        srp.adopt_checkpoint(dict(u.srp.latest.fields), list(u.srp.latest.fds),
                             u.srp.latest.generation, u.srp.seq)


def _restore_counters(m: Manager, c: dict[str, int]) -> None:
    m.notify.accepted = c.get("notify_accepted", 0)
    m.reaper.orphans = c.get("orphans_reaped", 0)
    m.faults.count = c.get("internal_errors", 0)
    for key, n in c.items():
        if key.startswith("notify_rejected\x1f"):
            m.notify.rejected[key.split("\x1f", 1)[1]] = n
    if "relays" in c:
        from ..relay.coordinator import Coordinator

        m.relays = Coordinator(m.port)
        m.relays.count = c["relays"]
        for key, n in c.items():
            parts = tuple(key.split("\x1f"))
            if parts[0] == "relay_outcome" and len(parts) == 4:
                m.relays.outcomes[(parts[1], parts[2], parts[3])] = n
            elif parts[0] == "srp_handoff" and len(parts) == 3:
                m.relays.handoffs[(parts[1], parts[2])] = n


def state_fds_of(u: Any) -> list[int]:
    fds = [n.fd for n in u.listeners] + [n.fd for n in u.fdstore]
    if u.srp is not None:
        fds += [c.fd for c in u.srp.channels]
        fds += list(u.srp.latest.fds) if u.srp.latest else []
    return fds


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def answer(m: Manager, state: ManagerState) -> None:
    """Tell the client that asked for the re-exec how it went (we are the new manager)."""
    from .. import __version__

    took = time.monotonic() - state.taken_at
    m.log.info("manager.reexecuted", pid=os.getpid(), version=__version__,
               previous=state.aeterna_version, units=len(state.units), took=round(took, 3))
    if state.reply_fd is None:
        return
    from ..wire.control import reply_ok

    sock = socket.socket(fileno=state.reply_fd)
    try:
        sock.setblocking(True)
        sock.settimeout(2.0)
        sock.sendall(reply_ok({"pid": os.getpid(), "version": __version__,
                               "previous_version": state.aeterna_version,
                               "units": len(state.units), "took": round(took, 4),
                               "reexecs": m.reexec.identity.reexecs}))
    except OSError:
        pass  # the client went away: nothing to tell
    finally:
        sock.close()


# --------------------------------------------------------------------------- --check-state
def check_state(fd: int) -> str | None:
    """``aeterna --check-state FD``: can this binary resume from that state? None if so,
    else why not (the old manager then keeps running)."""
    from ..loader import load_paths
    from ..loader.errors import UnitErrors
    from ..wire.state import MAX_STATE, StateError, decode

    try:
        state = decode(handover.read_state(fd, MAX_STATE))
    except (StateError, ValueError, OSError) as exc:
        return str(exc)
    try:
        loaded = load_paths(list(state.paths))
    except UnitErrors as exc:
        return "the unit files do not load:\n" + "\n".join(map(str, exc.errors))
    names = {u.name for u in loaded.units}
    gone = [u.name for u in state.units if u.name not in names and u.state != "inactive"]
    if gone:
        return (f"units no longer defined in the unit files: {', '.join(gone)} "
                "(run 'aeterna reload' or stop them first)")
    return None


def read_resume(fd: int) -> ManagerState:
    """``aeterna --resume-state FD``: the state, its memfd closed."""
    from ..wire.state import MAX_STATE, decode

    try:
        return decode(handover.read_state(fd, MAX_STATE))
    finally:
        os.close(fd)
