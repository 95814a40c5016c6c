"""An SRP test app built on the SDK: a counter that every generation keeps counting.

State: ``{"counter": n, "gens": [generations that held it], "pad": "..."}``.
While it holds the state (not quiesced) the main thread adds 1 to the counter
every ``SRP_TICK`` seconds. Every event is one stdout line
``srp_app gen=G <event> counter=C gens=[...]`` for the tests to wait on.
Behaviour comes from the environment, read at start (a reload re-reads the
unit file, so editing it changes what N+1 does):

``SRP_CHECKPOINT``  ``ok`` | ``ignore`` (never answers) | ``refuse`` (raises)
``SRP_LOAD``        ``ok`` | ``crash`` (exits 3 after receiving the state, before LOADED)
``SRP_SAVE_EVERY``  seconds between unsolicited checkpoints (0: none)
``SRP_CRASH_FLAG``  a file: if it exists, remove it and crash (exit 1) after 3 saves
``SRP_SOAK_FAIL_AFTER``  seconds after READY=1 to send WATCHDOG=trigger (fails a canary)
``SRP_PAD_BYTES``   pad the state with that many bytes
"""

import json
import os
import signal
import sys
import threading
import time

from aeterna_sdk import AeternaClient

GEN = int(os.environ.get("AETERNA_GENERATION", "0"))
E = os.environ.get
TICK = float(E("SRP_TICK", "0.02"))
SAVE_EVERY = float(E("SRP_SAVE_EVERY", "0"))
SOAK_FAIL_AFTER = float(E("SRP_SOAK_FAIL_AFTER", "-1"))
CRASH_FLAG = E("SRP_CRASH_FLAG", "")

lock = threading.Lock()
active = True
stop = False
state = {"counter": 0, "gens": []}


def say(event, st=None):
    st = state if st is None else st
    print(f"srp_app gen={GEN} {event} counter={st['counter']} "
          f"gens={json.dumps(st['gens'], separators=(',', ':'))}", flush=True)


def validate(obj):
    if E("SRP_LOAD") == "crash":
        print(f"srp_app gen={GEN} crashing while loading", flush=True)
        os._exit(3)
    return isinstance(obj, dict) and "counter" in obj


def on_checkpoint():
    global active
    mode = E("SRP_CHECKPOINT", "ok")
    if mode == "ignore":
        time.sleep(3600)
    if mode == "refuse":
        raise RuntimeError("refusing to checkpoint")
    with lock:
        active = False
        return dict(state)


def on_quiesce(reason):
    with lock:
        say(f"quiesced reason={reason}")


def on_resume(obj):
    global active, state
    with lock:
        if obj is not None:
            state = obj
        active = True
        say("resumed")


def on_term(*_):
    global stop
    stop = True


def main():
    global state
    client = AeternaClient()
    loaded = client.load_context(timeout=30, validate=validate)  # SIGTERM kills us here
    signal.signal(signal.SIGTERM, on_term)
    if loaded is None:
        print(f"srp_app gen={GEN} cold reason={client.load_error}", flush=True)
    else:
        state = loaded
        say("loaded")
    state["gens"].append(GEN)
    pad = int(E("SRP_PAD_BYTES", "0"))
    if pad:
        state["pad"] = "x" * pad
    client.on_checkpoint(on_checkpoint, on_quiesce=on_quiesce, on_resume=on_resume)
    client.ready(status="counting")
    say("ready")
    started = time.monotonic()
    last_save = started
    saves = 0
    triggered = False
    while not stop:
        time.sleep(TICK)
        now = time.monotonic()
        with lock:
            if not active:
                continue
            state["counter"] += 1
            if SAVE_EVERY > 0 and now - last_save >= SAVE_EVERY:
                last_save = now
                if client.save_context(state):
                    saves += 1
                    say("saved")
                    if CRASH_FLAG and saves >= 3 and os.path.exists(CRASH_FLAG):
                        os.unlink(CRASH_FLAG)
                        say("crashing")
                        os._exit(1)
        if SOAK_FAIL_AFTER >= 0 and not triggered and now - started >= SOAK_FAIL_AFTER:
            triggered = True
            with lock:
                say("failing the soak")
            client.notify("WATCHDOG=trigger")
    with lock:
        say("stopped")
    sys.exit(0)


if __name__ == "__main__":
    main()
