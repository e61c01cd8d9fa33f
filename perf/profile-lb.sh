#!/usr/bin/env bash
# Counts lb's user-space instructions per proxied request under callgrind and prints the
# costliest functions (inclusive). Needs nginx (upstream) and valgrind; uses CPU 0 for lb and
# CPU 1 for everything else. BIN=DIR takes sluice and sluice-perf from DIR; LB_ARGS adds lb flags;
# THREADS=1 also prints each thread's share (the core, the access-log writer).
#
#   cargo build --release -p sluice -p perf && perf/profile-lb.sh [requests] [connections]
#
# TLS=1 profiles HTTPS keep-alive instead (a self-signed ECDSA certificate made by openssl for
# the run; the load generator speaks TLS 1.3). H2=1 drives HTTP/2 with h2load (nghttp2-client):
# h2c, or h2 over TLS with TLS=1; 100 concurrent streams per connection.
set -euo pipefail
requests=${1:-2000}
connections=${2:-4}
bin=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
work=$(mktemp -d /tmp/sluice-profile-XXXX)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.5; [ -n "${KEEP:-}" ] || rm -rf "$work"; rm -rf /dev/shm/$(basename "$work")' EXIT
up=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
px=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/up.conf" <<CONF
worker_processes 1; daemon off; error_log $work/up.log warn; pid $work/up.pid;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work; uwsgi_temp_path $work; scgi_temp_path $work;
  server { listen 127.0.0.1:$up; location / { return 200 "ok"; } } }
CONF
mkdir -p "$work/m"
scheme=http
listener="{name: http, port: $px, protocol: HTTP}"
if [ -n "${TLS:-}" ]; then
  scheme=https
  listener="{name: https, port: $px, protocol: HTTPS, tls: {certificateRefs: [{name: bench-tls}]}}"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=bench.example -addext subjectAltName=DNS:bench.example \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
  { echo "apiVersion: v1"; echo "kind: Secret"; echo "metadata: {name: bench-tls, namespace: default}";
    echo "type: kubernetes.io/tls"; echo "stringData:"; echo "  tls.crt: |"; sed 's/^/    /' "$work/cert.pem";
    echo "  tls.key: |"; sed 's/^/    /' "$work/key.pem"; } > "$work/m/secret.yaml"
fi
cat > "$work/m/bench.yaml" <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice}
spec: {controllerName: sluice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bench, namespace: default}
spec: {gatewayClassName: sluice, listeners: [$listener]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench, namespace: default}
spec: {parentRefs: [{name: bench}], hostnames: [bench.example], rules: [{backendRefs: [{name: up, port: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: up, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: up-1, namespace: default, labels: {kubernetes.io/service-name: up}}
addressType: IPv4
ports: [{name: http, port: $up}]
endpoints: [{addresses: [127.0.0.1]}]
YAML
table=/dev/shm/$(basename "$work")/table
taskset -c 1 nginx -c "$work/up.conf" -p "$work" &
taskset -c 1 "$bin/sluice" config-sync --manifests "$work/m" --table "$table" 2> "$work/cs.log" &
taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" ${THREADS:+--separate-threads=yes} \
  "$bin/sluice" lb --table "$table" --cores 0 --bind-address 127.0.0.1 ${LB_ARGS:-} 2> "$work/lb.log" &
vg=$!
for _ in $(seq 120); do curl -skf -m 2 --resolve "bench.example:$px:127.0.0.1" "$scheme://bench.example:$px/" >/dev/null && break; sleep 1; done
load() { "$bin/sluice-perf" load "$scheme://127.0.0.1:$px/" -H 'Host: bench.example' -c "$connections" -n "$1" -d 600 --warmup 0 --cpus 1 | grep requests; }
if [ -n "${H2:-}" ]; then
  # HTTP/2 (h2c, or h2 over TLS with TLS=1): h2load, 100 streams per connection.
  load() { taskset -c 1 h2load -c "$connections" -m 100 -n "$1" -H ':authority: bench.example' "$scheme://127.0.0.1:$px/" | grep -E '^(requests|status codes):'; }
fi
load 200 >/dev/null
[ -n "${NOZERO:-}" ] || callgrind_control -z "$vg" >/dev/null
load "$requests"
callgrind_control -d "$vg" >/dev/null
sleep 1
dump=$(ls -t "$work"/cg.out.* | head -1)
if [ -n "${THREADS:-}" ]; then
  # Per thread: the cores apart from the access-log writer and the admin thread; the busiest
  # (the core) is the one annotated below.
  busiest=0
  for f in "$work"/cg.out.*-*; do
    t=$(grep -E '^(summary|totals):' "$f" | head -1 | awk '{print $2}')
    [ "${t:-0}" -gt 0 ] && echo "thread $(grep -m1 '^thread:' "$f" | cut -d' ' -f2): $((t / requests)) per request"
    if [ "${t:-0}" -gt "$busiest" ]; then busiest=$t; dump=$f; fi
  done
fi
total=$(grep -E '^(summary|totals):' "$dump" | head -1 | awk '{print $2}')
echo "instructions per request: $((total / requests)) ($total over $requests requests)"
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | sed -n 1,45p | cut -c1-170
