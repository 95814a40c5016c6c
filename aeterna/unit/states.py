"""The unit lifecycle's vocabulary: states, events, what a unit wants next, and state sets.

The transition table itself is :data:`aeterna.unit.table.TRANSITIONS`: it holds
the handler functions, so it lives beside them. The string values of
``State`` are the names that logs, ``aeterna status`` and metric labels use.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    INACTIVE = "inactive"
    WAITING = "waiting"  # start requested, ordered dependencies not up yet
    START_PRE = "start-pre"  # running ExecStartPre= commands
    STARTING = "starting"  # process running, not ready yet (notify, oneshot)
    START_POST = "start-post"  # running ExecStartPost= commands
    ACTIVE = "active"
    RELOADING = "reloading"  # notify-reload: reload signal sent, or RELOADING=1 received
    EXITED = "exited"  # a oneshot that finished successfully ("active (exited)")
    STOP_PRE = "stop-pre"  # running ExecStop= commands before the stop signal
    STOPPING = "stopping"  # stop signal sent, waiting for the process group
    STOP_POST = "stop-post"  # running ExecStopPost= once the unit's processes are gone
    KILLING = "killing"  # SIGKILL sent after the stop timeout
    AUTO_RESTART = "auto-restart"  # waiting RestartSec before starting again
    FAILED = "failed"


class Event(enum.Enum):
    START = "start"
    STOP = "stop"
    DEPS_UP = "deps-up"
    DEP_FAILED = "dep-failed"
    READY = "ready"
    EXITED = "exited"  # the main process was reaped
    GROUP_EMPTY = "group-empty"  # no process of the unit's group is left
    TIMEOUT = "timeout"
    RESTART_DUE = "restart-due"
    WATCHDOG = "watchdog"  # the watchdog expired, or WATCHDOG=trigger
    RELOAD = "reload"  # an in-place reload was asked for (ExecReload=, notify-reload)
    RELOADING = "reloading"  # RELOADING=1 received
    COMMAND_EXITED = "command-exited"  # an Exec{StartPre,StartPost,Stop,Reload}= command ended
    RESET_FAILED = "reset-failed"  # `systemctl reset-failed`: a failed unit becomes inactive


class Want(enum.Enum):
    """What the unit does once its current run ends: one value, not three booleans.

    ``POLICY``: its ``Restart=`` policy decides (after its process exited on its
    own, or after a stop caused by a failure: timeout, watchdog, ExecStartPost=).
    ``START``: a restart was asked for; it starts again once it is down.
    ``STAY_DOWN``: a stop was asked for; nothing restarts it until a start.
    """

    POLICY = "policy"
    START = "start"
    STAY_DOWN = "stay-down"


class Deps(enum.Enum):
    """Where a unit's ordered dependencies stand, as the host sees them."""

    UP = "up"  # every ordered dependency is up: start
    WAITING = "waiting"  # some are on their way: wait for DEPS_UP or DEP_FAILED
    FAILED = "failed"  # a required one failed: fail without starting


UP_STATES = frozenset({State.ACTIVE, State.RELOADING, State.EXITED})
RUNNING_STATES = frozenset({State.STARTING, State.START_POST, State.ACTIVE, State.RELOADING})
DOWN_STATES = frozenset({State.INACTIVE, State.FAILED})
STOPPING_STATES = frozenset({State.STOPPING, State.KILLING})
# Where a start asked for now means "start again once down" (systemd: a start
# job waits for the stop job).
GOING_DOWN_STATES = frozenset({State.AUTO_RESTART, State.STOP_PRE, State.STOP_POST,
                               *STOPPING_STATES})

# How long to wait for the group to die after SIGKILL before giving up on it
# (a process in uninterruptible sleep cannot be killed).
KILL_TIMEOUT = 5.0
