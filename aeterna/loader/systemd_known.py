"""systemd directives that Aeterna knows about but does not implement.

Only the wording of a warning depends on these lists: "not implemented by
Aeterna" for a real systemd directive, "unknown directive" for anything else,
which is most likely a typo. Both are warnings, as in systemd. The lists
follow systemd.unit(5), systemd.service(5), systemd.socket(5), systemd.exec(5),
systemd.kill(5) and systemd.resource-control(5) as of v257.
"""

from __future__ import annotations

import re

IGNORED_SILENTLY: dict[str, frozenset[str]] = {
    # Informational, or about implicit dependencies Aeterna never adds.
    "Unit": frozenset({"Documentation", "DefaultDependencies", "SourcePath"}),
}

UNIMPLEMENTED: dict[str, frozenset[str]] = {
    "Unit": frozenset("""
        BindsTo PartOf Upholds Conflicts Requisite OnFailure OnSuccess OnFailureJobMode
        OnSuccessJobMode OnFailureIsolate PropagatesReloadTo ReloadPropagatedFrom
        PropagatesStopTo StopPropagatedFrom JoinsNamespaceOf RequiresMountsFor
        WantsMountsFor IgnoreOnIsolate StopWhenUnneeded RefuseManualStart RefuseManualStop
        AllowIsolate CollectMode FailureAction SuccessAction FailureActionExitStatus
        SuccessActionExitStatus JobTimeoutSec JobRunningTimeoutSec JobTimeoutAction
        JobTimeoutRebootArgument StartLimitAction RebootArgument SurviveFinalKillSignal
    """.split()),
    "Service": frozenset("""
        PIDFile BusName RemainAfterExit GuessMainPID ExecCondition ExecStopPost
        RestartPreventExitStatus RestartForceExitStatus RestartMode RootDirectoryStartOnly
        PermissionsStartOnly NonBlocking FileDescriptorStorePreserve USBFunctionDescriptors
        USBFunctionStrings OOMPolicy OpenFile ExitType RuntimeMaxSec RuntimeRandomizedExtraSec
        TimeoutAbortSec TimeoutStartFailureMode TimeoutStopFailureMode RestartKillSignal
        SendSIGHUP SendSIGKILL FinalKillSignal RemoveIPC
    """.split()),
    "Socket": frozenset("""
        SocketProtocol BindToDevice DirectoryMode MaxConnections MaxConnectionsPerSource
        KeepAliveTimeSec KeepAliveIntervalSec KeepAliveProbes DeferAcceptSec Priority Mark
        IPTOS IPTTL PipeSize MessageQueueMaxMessages MessageQueueMessageSize FreeBind
        Transparent Broadcast PassCredentials PassPIDFD PassSecurity PassPacketInfo
        AcceptFileDescriptors Timestamping TCPCongestion ExecStartPre ExecStartPost
        ExecStopPre ExecStopPost TimeoutSec Symlinks SmackLabel SmackLabelIPIn SmackLabelIPOut
        SELinuxContextFromNet FlushPending TriggerLimitIntervalSec TriggerLimitBurst
        PollLimitIntervalSec PollLimitBurst Writable PassFileDescriptorsToExec DeferTrigger
        DeferTriggerMaxSec User Group KillMode KillSignal
    """.split()),
}

# Execution, sandboxing, logging and resource-control directives, valid in both
# [Service] and [Socket] (where they shape the socket's own Exec* commands).
_EXEC_AND_RESOURCES = re.compile(r"""
    (Limit|Protect|Private|Restrict|Memory|CPU|IO|BlockIO|Startup|Tasks|Device|IP|Socket
    |Runtime|State|Cache|Logs|Configuration|ReadWrite|ReadOnly|Inaccessible|ExecPaths
    |NoExecPaths|Temporary|Lock|SystemCall|LoadCredential|SetCredential|ImportCredential
    |Managed|Coredump|NetworkNamespace|IPCNamespace|BPFProgram|Mount|Bind|Root|TTY|Log
    |Syslog|Standard|Nice|OOM|Keyring|Delegate|Slice|DynamicUser|SupplementaryGroups
    |CapabilityBoundingSet|AmbientCapabilities|NoNewPrivileges|SecureBits|SELinux|AppArmor
    |Smack|UMask|TimerSlack|Personality|IgnoreSIGPIPE|PAMName|Utmp|NUMA|UnsetEnvironment
    |PassEnvironment|Environment|Extension|Hostname|Disable|Accounting|AllowedCPUs
    |AllowedMemoryNodes|DefaultMemory|ManagedOOM|NotifyAccess|CoredumpFilter)\w*
""", re.VERBOSE)


def is_unimplemented(section: str, key: str) -> bool:
    """True for an execution or resource-control directive in [Service] or [Socket]."""
    return section in ("Service", "Socket") and bool(_EXEC_AND_RESOURCES.fullmatch(key))


# What a sandboxing or resource directive would have done under systemd, by prefix:
# the warning says it, so that a user knows what protection the unit runs without.
_WOULD_HAVE = (
    ("Protect", "made parts of the file system, kernel or clock read-only or hidden"),
    ("Private", "given the unit private /tmp, devices, network, users or IPC"),
    ("Restrict", "restricted namespaces, address families, realtime or SUID files"),
    ("SystemCall", "filtered the system calls the unit may make (seccomp)"),
    ("ReadWritePaths", "made the file system read-only except these paths"),
    ("ReadOnlyPaths", "made these paths read-only"),
    ("InaccessiblePaths", "hidden these paths"),
    ("Capability", "limited the capabilities the unit's processes keep"),
    ("AmbientCapabilities", "given the unit's processes these capabilities"),
    ("NoNewPrivileges", "stopped the unit's processes gaining privileges (setuid)"),
    ("LockPersonality", "locked the execution domain"),
    ("MemoryDenyWriteExecute", "refused writable and executable memory"),
    ("Device", "limited the devices the unit may open (a cgroup)"),
    ("IPAddress", "filtered the unit's IP traffic (a cgroup)"),
    ("Memory", "limited the unit's memory (a cgroup)"),
    ("CPU", "limited or weighted the unit's CPU (a cgroup)"),
    ("Tasks", "limited the unit's number of tasks (a cgroup)"),
    ("IO", "limited or weighted the unit's I/O (a cgroup)"),
    ("LoadCredential", "passed credentials in $CREDENTIALS_DIRECTORY"),
    ("SetCredential", "passed credentials in $CREDENTIALS_DIRECTORY"),
    ("ImportCredential", "passed credentials in $CREDENTIALS_DIRECTORY"),
    ("Standard", "connected the unit's stdio elsewhere (here: the manager's output, "
     "prefixed)"),
    ("RemoveIPC", "removed the unit user's IPC objects at stop"),
    ("KeyringMode", "given the unit a keyring of its own"),
    ("Delegate", "delegated a cgroup subtree to the unit"),
    ("Slice", "placed the unit in a cgroup slice"),
)


def would_have(key: str) -> str:
    """'; under systemd it would have ...' for a sandboxing directive, else ''."""
    for prefix, what in _WOULD_HAVE:
        if key.startswith(prefix):
            return f" (under systemd it would have {what})"
    return ""
