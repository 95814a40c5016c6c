"""The WSGI app that bench/relay.py serves with gunicorn under every supervisor.

It answers every request with a short 200 and echoes the request's id (the
query string that bench/relay.py's wrk script puts in each request) in an
``X-Id`` header, so that the script can match a response to its request and
time each one, whichever of the thread's connections it came back on. ``X-Pid``
names the worker, so that a timeline can show which generation answered.
"""

import os


def app(environ, start_response):
    body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body))),
                              ("X-Id", environ.get("QUERY_STRING", "")),
                              ("X-Pid", str(os.getpid()))])
    return [body]
