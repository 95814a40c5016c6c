"""The unit lifecycle's vocabulary: states, events and the transition table.

``TRANSITIONS[(state, event)]`` names the ``UnitRuntime`` handler
``<state>_<event>`` that runs, or ``ignore``. Every cell is filled (a test
checks it), so an event that arrives in a state that does not expect it is a
visible, deliberate no-op rather than an accident.
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
    RELOAD = "reload"  # an in-place reload was asked for (notify-reload)
    RELOADING = "reloading"  # RELOADING=1 received
    CONTROL_EXITED = "control-exited"  # an Exec{StartPre,StartPost,Stop,Reload}= command ended


UP_STATES = frozenset({State.ACTIVE, State.RELOADING, State.EXITED})
RUNNING_STATES = frozenset({State.STARTING, State.START_POST, State.ACTIVE, State.RELOADING})
DOWN_STATES = frozenset({State.INACTIVE, State.FAILED})

_I = "ignore"
TRANSITIONS: dict[tuple[State, Event], str] = {}
for _s in State:
    for _e in Event:
        TRANSITIONS[(_s, _e)] = _I
TRANSITIONS.update({
    (State.INACTIVE, Event.START): "down_start",
    (State.FAILED, Event.START): "down_start",
    (State.WAITING, Event.STOP): "waiting_stop",
    (State.WAITING, Event.DEPS_UP): "waiting_deps_up",
    (State.WAITING, Event.DEP_FAILED): "waiting_dep_failed",
    (State.STARTING, Event.STOP): "running_stop",
    (State.STARTING, Event.READY): "starting_ready",
    (State.STARTING, Event.EXITED): "running_exited",
    (State.STARTING, Event.TIMEOUT): "starting_timeout",
    (State.STARTING, Event.WATCHDOG): "running_watchdog",
    (State.ACTIVE, Event.STOP): "running_stop",
    (State.ACTIVE, Event.EXITED): "running_exited",
    (State.ACTIVE, Event.WATCHDOG): "running_watchdog",
    (State.ACTIVE, Event.RELOAD): "active_reload",
    (State.ACTIVE, Event.RELOADING): "active_reloading",
    (State.RELOADING, Event.STOP): "running_stop",
    (State.RELOADING, Event.EXITED): "running_exited",
    (State.RELOADING, Event.WATCHDOG): "running_watchdog",
    (State.RELOADING, Event.READY): "reloading_ready",
    (State.RELOADING, Event.RELOADING): "reloading_reloading",
    (State.RELOADING, Event.TIMEOUT): "reloading_timeout",
    (State.EXITED, Event.STOP): "exited_stop",
    (State.START_PRE, Event.CONTROL_EXITED): "control_exited",
    (State.START_PRE, Event.TIMEOUT): "control_timeout",
    (State.START_PRE, Event.STOP): "start_pre_stop",
    (State.START_POST, Event.CONTROL_EXITED): "control_exited",
    (State.START_POST, Event.TIMEOUT): "control_timeout",
    (State.START_POST, Event.STOP): "running_stop",
    (State.START_POST, Event.EXITED): "running_exited",
    (State.START_POST, Event.WATCHDOG): "running_watchdog",
    (State.STOP_PRE, Event.CONTROL_EXITED): "control_exited",
    (State.STOP_PRE, Event.TIMEOUT): "control_timeout",
    (State.STOP_PRE, Event.EXITED): "stop_pre_exited",
    (State.RELOADING, Event.CONTROL_EXITED): "control_exited",
    (State.STOPPING, Event.START): "stopping_start",
    (State.STOPPING, Event.EXITED): "stopping_exited",
    (State.STOPPING, Event.GROUP_EMPTY): "stopping_group_empty",
    (State.STOPPING, Event.TIMEOUT): "stopping_timeout",
    (State.KILLING, Event.START): "stopping_start",
    (State.KILLING, Event.EXITED): "stopping_exited",
    (State.KILLING, Event.GROUP_EMPTY): "stopping_group_empty",
    (State.KILLING, Event.TIMEOUT): "killing_timeout",
    (State.AUTO_RESTART, Event.START): "auto_restart_due",
    (State.AUTO_RESTART, Event.RESTART_DUE): "auto_restart_due",
    (State.AUTO_RESTART, Event.STOP): "auto_restart_stop",
})

# How long to wait for the group to die after SIGKILL before giving up on it
# (a process in uninterruptible sleep cannot be killed).
KILL_TIMEOUT = 5.0

