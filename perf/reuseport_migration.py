#!/usr/bin/env python3
"""How often the kernel resets a handshake while SO_REUSEPORT listeners shut down under load.

Without lb: `old` listeners and two `new` ones share a loopback port; three threads connect in
a loop while the new ones accept; then the old ones shut down (shutdown(2), which migrates
their backlogs when net.ipv4.tcp_migrate_req=1) and the connects that failed are counted.
Modes: together (old listeners shut down at once), sequential (one after the other),
spaced (50 ms apart), one (only the first of the old listeners). docs/kubernetes.md has the
figures.  Usage: reuseport_migration.py MODE ROUNDS [OLD_LISTENERS]
"""
import socket
import sys
import threading
import time

mode, rounds = sys.argv[1], int(sys.argv[2])
n_old = int(sys.argv[3]) if len(sys.argv) > 3 else 2
ok = failed = 0


def listener(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4096)
    return s


for r in range(rounds):
    port = 20000 + r % 5000
    old = [listener(port) for _ in range(n_old)]
    new = [listener(port) for _ in range(2)]
    stop = False

    def acceptor(s):
        s.settimeout(0.2)
        while not stop:
            try:
                s.accept()[0].close()
            except OSError:
                pass

    def client():
        global ok, failed
        while not stop:
            c = socket.socket()
            try:
                c.connect(("127.0.0.1", port))
                ok += 1
            except OSError as e:
                failed += 1
                print(f"round {r}: {e}", flush=True)
            c.close()

    threads = [threading.Thread(target=acceptor, args=(s,)) for s in new]
    threads += [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.02)
    closing = old[:1] if mode == "one" else old
    barrier, lock = threading.Barrier(len(closing)), threading.Lock()

    def shut(s):
        barrier.wait()
        if mode == "together" or mode == "one":
            s.shutdown(socket.SHUT_RDWR)
            return
        with lock:
            s.shutdown(socket.SHUT_RDWR)
            if mode == "spaced":
                time.sleep(0.05)

    shutters = [threading.Thread(target=shut, args=(s,)) for s in closing]
    for t in shutters:
        t.start()
    for t in shutters:
        t.join()
    time.sleep(0.01)
    stop = True
    for t in threads:
        t.join()
    for s in old + new:
        s.close()
print(f"{mode}, {n_old} old listeners, {rounds} rounds: {ok} connects, {failed} reset")
