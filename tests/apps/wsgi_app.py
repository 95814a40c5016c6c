"""A tiny WSGI app for gunicorn under Aeterna.

``APP_IMPORT_SLEEP`` (seconds) makes importing this module slow, so that a
test can watch the unit stay ``starting`` until gunicorn says READY=1 (with
``--preload`` the arbiter imports the app before it notifies).
"""

import os
import time

time.sleep(float(os.environ.get("APP_IMPORT_SLEEP", "0")))


def app(environ, start_response):
    body = f"hello from wsgi pid={os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
