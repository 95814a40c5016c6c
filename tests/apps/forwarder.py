"""A unit that forwards what the test sends it, as itself: notify datagrams and SRP records.

``forwarder.py PATH`` listens on a SEQPACKET socket at PATH. Each record it
receives is ``N`` + payload (sent to ``$NOTIFY_SOCKET``) or ``S`` + payload
(sent on its SRP channel, ``$AETERNA_SRP_FD``), with the record's fds attached;
it answers ``ok`` (or ``err``). So a test can speak for an authorised unit
process without being one. Says READY=1 at start; never reads what the manager
sends on the SRP channel (a peer that ignores the manager is one more fault).
"""

import os
import socket
import sys

path = sys.argv[1]
if os.path.exists(path):
    os.unlink(path)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
srv.bind(path)
srv.listen(4)
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.connect(os.environ["NOTIFY_SOCKET"])
srp_fd = os.environ.get("AETERNA_SRP_FD")
srp = socket.socket(fileno=int(srp_fd)) if srp_fd else None
if srp is not None:
    srp.setblocking(False)
notify.send(b"READY=1")
print("forwarder ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        while True:
            try:
                data, fds, _flags, _ = socket.recv_fds(conn, 70000, 253)
            except OSError:
                break
            if not data and not fds:
                break
            target, body = data[:1], data[1:]
            out = notify if target == b"N" else srp
            answer = b"ok"
            try:
                if out is None:
                    answer = b"err"
                elif fds:
                    socket.send_fds(out, [body], fds)
                else:
                    out.send(body)
            except OSError:
                answer = b"err"
            finally:
                for fd in fds:
                    os.close(fd)
            try:
                conn.send(answer)
            except OSError:
                break
