"""A burst of N HTTPRoute files written at once into a running `sluice up` (the quickstart
manifests, lb on core 0): how many tables config-sync publishes for them, and when the last
route is live. Loopback only; bounded (30 s).

    cargo build --release -p sluice && python3 perf/burst.py target/release/sluice 200

Each file is written beside the folder's and renamed into place (a settled file: read at
once). "Live" is polled route by route, one connection each, so it is an upper bound.
"""
import os, shutil, socket, subprocess, sys, tempfile, time

sluice, n = sys.argv[1], int(sys.argv[2])
work = tempfile.mkdtemp(prefix="sluice-burst-")
quickstart = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "examples", "quickstart")
shutil.copytree(quickstart, work + "/manifests")
log = open(work + "/up.log", "w")
up = subprocess.Popen([sluice, "up", "--manifests", work + "/manifests", "--cores", "0"],
                      stderr=log, stdout=log, env=dict(os.environ, RUST_LOG="info"))

def status(host):
    try:
        s = socket.create_connection(("127.0.0.1", 8080), timeout=1)
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = s.recv(64)
        s.close()
        return int(data.split()[1])
    except Exception:
        return None

deadline = time.time() + 30
while status("demo.example") != 200:
    assert time.time() < deadline, "sluice up did not serve"
    time.sleep(0.05)
time.sleep(1)

def published():
    return sum(1 for l in open(work + "/up.log") if "published generation=" in l)

before = published()
route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: burst-{i}, namespace: default}}\nspec:\n  parentRefs: [{{name: demo}}]\n  hostnames: [b{i}.burst.example]\n  rules:\n  - backendRefs: [{{name: demo-v1, port: 80}}]\n"
start = time.perf_counter()
for i in range(n):
    tmp = f"{work}/manifests/.burst-{i}.tmp"
    with open(tmp, "w") as f:
        f.write(route.format(i=i))
    os.rename(tmp, f"{work}/manifests/burst-{i}.yaml")
written = time.perf_counter() - start
pending = set(range(n))
while pending:
    pending = {i for i in pending if status(f"b{i}.burst.example") != 200}
    assert time.perf_counter() - start < 30, f"{len(pending)} never live"
live = time.perf_counter() - start
time.sleep(0.5)
print(f"{n} files written in {written*1000:.1f} ms (renamed into place); every route live "
      f"{live*1000:.1f} ms after the first write; {published() - before} tables published")
up.terminate()
up.wait(timeout=10)
shutil.rmtree(work, ignore_errors=True)
