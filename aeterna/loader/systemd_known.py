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
        SendSIGHUP SendSIGKILL FinalKillSignal
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
