"""An SRP test app that speaks the protocol by hand (no SDK), to send what the SDK never would.

On ``CHECKPOINT`` it answers according to ``SRP_RAW_MODE``:

``unsealed``      a memfd without any seal (the manager must reject it)
``no-size-seals`` a snapshot sealed WRITE only, without SHRINK/GROW
``bad-checksum``  a properly sealed snapshot whose CHECKSUM= does not match
``ok``            a correct snapshot

then behaves like an SDK app: prints ``srp_raw gen=G quiesced`` and stops
"working". On ``RESUME`` it answers ``LOADED=1`` and prints ``resumed``. The
state is ``{"counter": 41, "gens": [G]}``.

It sends READY=1 first. ``SRP_RAW_HELLO=1`` then sends ``HELLO WANT_STATE=1``
(``SRP_RAW_HELLO=<n>`` sends it n times, ``SRP_RAW_HELLO_AFTER`` seconds after
READY=1), and on ``STATE=1`` it answers as
``SRP_RAW_LOADED`` says: ``1``, ``0`` or ``never``. Unset: no HELLO at all.
"""

import array
import fcntl
import hashlib
import json
import os
import socket
import sys
import time

GEN = int(os.environ.get("AETERNA_GENERATION", "0"))
MODE = os.environ.get("SRP_RAW_MODE", "ok")
SEALS_SNAPSHOT = (fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                  | fcntl.F_SEAL_SEAL)


def say(msg):
    print(f"srp_raw gen={GEN} {msg}", flush=True)


def parse(data):
    fields = {}
    for line in data.decode().split("\n"):
        k, _, v = line.partition("=")
        if k and k not in fields:
            fields[k] = v
    return fields


def answer(sock, seq):
    data = json.dumps({"counter": 41, "gens": [GEN]}).encode()
    fd = os.memfd_create("srp-raw", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    checksum = "sha256:" + hashlib.sha256(data).hexdigest()
    if MODE == "no-size-seals":
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
    elif MODE != "unsealed":
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS_SNAPSHOT)
    if MODE == "bad-checksum":
        checksum = "sha256:" + "0" * 64
    msg = (f"STATE=1\nSEQ={seq}\nFORMAT=json\nSIZE={len(data)}\nCHECKSUM={checksum}\n"
           "FDNAMES=state\nFDKINDS=snapshot\n").encode()
    sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    os.close(fd)
    say(f"answered mode={MODE}")
    say("quiesced")


def main():
    sock = socket.socket(fileno=int(os.environ["AETERNA_SRP_FD"]))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
    say("ready")
    time.sleep(float(os.environ.get("SRP_RAW_HELLO_AFTER", "0")))  # READY well before HELLO
    for _ in range(int(os.environ.get("SRP_RAW_HELLO", "0"))):
        sock.send(b"HELLO=1\nVERSION=1\nWANT_STATE=1\n")
    while True:
        data, fds, _flags, _ = socket.recv_fds(sock, 16384, 253)
        if not data:
            say("channel closed")
            sys.exit(0)
        for fd in fds:
            os.close(fd)
        fields = parse(data)
        if "CHECKPOINT" in fields:
            answer(sock, fields.get("SEQ"))
        elif fields.get("STATE") == "1":
            say(f"got state fds={len(fds)}")
            loaded = os.environ.get("SRP_RAW_LOADED", "1")
            if loaded != "never":
                sock.send(f"LOADED={loaded}\nSEQ={fields.get('SEQ')}\nERROR=test\n".encode())
                say(f"loaded={loaded}")
        elif "RESUME" in fields:
            sock.send(f"LOADED=1\nSEQ={fields.get('SEQ')}\n".encode())
            say("resumed")


if __name__ == "__main__":
    main()
