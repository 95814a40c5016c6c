"""A WSGI app for hot-relay tests under gunicorn (run it with ``--preload``).

With ``--preload`` gunicorn imports this module in the arbiter, *before* it
sends READY=1 and before it forks its workers, so what happens at import time
decides how generation N+1 starts. The unit's ``env`` picks a behaviour with
``MODE`` (the relay tests edit the unit file, then reload):

``""`` (unset)
    a normal, healthy app.
``crash-at-start``
    the arbiter exits with status 3 while importing: no READY=1, no worker.
``hang-before-ready``
    the import sleeps ``HANG_SECONDS`` (default 60): READY=1 never comes.
``crash-during-soak``
    ``CRASH_AFTER`` seconds (default 0.5) after import the arbiter crashes
    *cleanly for its clients*: it asks itself to stop (gunicorn's SIGTERM:
    listeners closed, workers finish the request in hand, then exit) and only
    once its main thread has finished does it die with status 1. No request a
    worker accepted is dropped.
``crash-hard-during-soak``
    ``CRASH_AFTER`` seconds after import the arbiter calls ``os._exit(1)``
    at once; its workers are orphaned with whatever requests they hold.
``unhealthy``
    ``/healthz`` answers 503; everything else works.
``eat-memory``
    the import allocates (and touches) ``EAT_MIB`` MiB (default 300).

Routes: ``/`` answers ``pid=<worker> ppid=<arbiter> gen=<AETERNA_GENERATION>``;
``/healthz`` ``ok``; ``/slow?s=0.5`` the same body as ``/`` after a sleep.
"""

import os
import signal
import sys
import threading
import time

MODE = os.environ.get("MODE", "")
GEN = os.environ.get("AETERNA_GENERATION", "?")
ARBITER = os.getpid()  # with --preload: the gunicorn arbiter, the unit's main process


def _say(msg):
    print(f"relay_app[{os.getpid()}] gen={GEN}: {msg}", file=sys.stderr, flush=True)


def _crash_later(hard):
    time.sleep(float(os.environ.get("CRASH_AFTER", "0.5")))
    if hard:
        _say("crashing hard (os._exit(1)), workers orphaned")
        os._exit(1)
    _say("crashing: stopping the workers first")
    os.kill(ARBITER, signal.SIGTERM)  # gunicorn: graceful stop of the workers
    # gunicorn's arbiter returns from its main loop once every worker has
    # exited; then the interpreter joins this (non-daemon) thread.
    while threading.main_thread().is_alive():
        time.sleep(0.02)
    _say("crashing: exit status 1")
    os._exit(1)


if MODE == "crash-at-start":
    _say("crashing at start (exit 3)")
    os._exit(3)
elif MODE == "hang-before-ready":
    _say("hanging before READY=1")
    time.sleep(float(os.environ.get("HANG_SECONDS", "60")))
elif MODE in ("crash-during-soak", "crash-hard-during-soak"):
    threading.Thread(target=_crash_later, args=(MODE == "crash-hard-during-soak",),
                     name="crash", daemon=False).start()
elif MODE == "eat-memory":
    _BALLAST = b"\x01" * (int(os.environ.get("EAT_MIB", "300")) << 20)
    _say(f"holding {len(_BALLAST) >> 20} MiB")


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    status = "200 OK"
    if path == "/healthz":
        if MODE == "unhealthy":
            status, body = "503 Service Unavailable", "unhealthy\n"
        else:
            body = "ok\n"
    else:
        if path == "/slow":
            query = environ.get("QUERY_STRING", "")
            secs = float(query[2:]) if query.startswith("s=") else 0.5
            time.sleep(secs)
        body = f"pid={os.getpid()} ppid={os.getppid()} gen={GEN}\n"
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(data)))])
    return [data]
