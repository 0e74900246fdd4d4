#!/usr/bin/env bash
# End to end through a real Envoy: the same listener with the ext_authz filter asking onbehalf,
# and without it. The route answers directly (direct_response), so the difference is the cost
# of the authorization check as a client sees it. onbehalf runs the OPA-Envoy-style policy
# (benches/policies/aliased.rego); Envoy stamps every request with a fresh x-request-id. Then
# memory: 100,000 distinct tokens through Envoy, onbehalf on its default serving threads.
#
#   benches/e2e.sh        # needs scripts/test.sh run once (Envoy, PyJWT); installs wrk
#
# Loopback only; each wrk run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
out=target/bench
mkdir -p "$out"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
venv=target/test-venv
envoy="$("$venv/bin/python" -c 'import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")')"
cargo build --release --locked --bins

# Envoy configs from envoy.yaml, all answering 200 themselves: without ext_authz, with
# ext_authz asking the no-op server (Envoy's own cost of the check), and asking onbehalf.
"$venv/bin/python" - <<'PY'
import re
text = open("envoy.yaml").read()
text = text.replace("route: { cluster: service_b }", 'direct_response: { status: 200, body: { inline_string: "ok" } }')
text = text.replace("port_value: 9901", "port_value: 9902")
open("target/bench/envoy-authz.yaml", "w").write(text)
open("target/bench/envoy-noop.yaml", "w").write(text.replace("port_value: 9191", "port_value: 9292"))
no_authz = re.sub(r"                  - name: envoy.filters.http.ext_authz\n(?:                    .*\n|                      .*\n)+?(?=                  - name: envoy.filters.http.router)", "", text)
open("target/bench/envoy-plain.yaml", "w").write(no_authz)
PY

echo 'wrk.method = "POST"' > "$out/post.lua"
token=$("$venv/bin/python" deploy/demo/mint_token.py --sub alice --claim employee=true \
        --act travel-agent --scope book_flight --ttl 3600 \
        --iss https://idp.bench --key tests/fixtures/rsa-1.pem --kid rsa-1)
# One Envoy worker opens one ext_authz connection, which one serving thread answers: both
# servers get one.
policy=(ONBEHALF_POLICY__DIR="$PWD/benches/policies" ONBEHALF_POLICY__QUERY=data.bench.aliased.allow)
cache_counts() {
  curl -s localhost:8181/metrics | awk '/^onbehalf_decision_cache_total\{result="hit"\}/ {h=$2}
    /^onbehalf_decision_cache_total\{result="miss"\}/ {m=$2} END {printf "%d %d", h, m}'
}
env "${policy[@]}" ONBEHALF_SERVER__WORKER_THREADS=1 target/release/onbehalf serve --config benches/bench.yaml 2>/dev/null & ob=$!
target/release/onbehalf-load noop --listen 127.0.0.1:9292 --threads 1 2>/dev/null & noop=$!
for _ in $(seq 1 100); do curl -sf localhost:8181/readyz >/dev/null && break; sleep 0.05; done

run() {  # name config
  "$envoy" -c "$2" --disable-hot-restart --concurrency 1 -l error & local e=$!
  for _ in $(seq 1 100); do curl -sf localhost:9902/ready >/dev/null && break; sleep 0.05; done
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$out/post.lua" --latency \
      http://127.0.0.1:8000/flights/bookings -H "Authorization: Bearer $token" > "$out/wrk-$1.txt"
  kill $e; wait $e 2>/dev/null || true
}
run plain target/bench/envoy-plain.yaml
run noop target/bench/envoy-noop.yaml
before=$(cache_counts)
run authz target/bench/envoy-authz.yaml
echo "$before $(cache_counts)" > "$out/e2e-hits.txt"
kill $ob $noop; wait $ob $noop 2>/dev/null || true

# Memory through Envoy: 100,000 distinct tokens (each a token and a decision new to the
# caches), onbehalf on its default serving threads (one per core); peak RSS after.
target/release/onbehalf-load tokens --count 100000 > "$out/tokens.txt"
cat > "$out/tokens.lua" <<'LUA'
local tokens = {}
for line in io.lines("target/bench/tokens.txt") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i + 1
  local t = tokens[(i - 1) % #tokens + 1]
  return wrk.format("POST", "/flights/bookings", {["Authorization"] = "Bearer " .. t})
end
LUA
env "${policy[@]}" target/release/onbehalf serve --config benches/bench.yaml 2>/dev/null & ob=$!
for _ in $(seq 1 100); do curl -sf localhost:8181/readyz >/dev/null && break; sleep 0.05; done
"$envoy" -c target/bench/envoy-authz.yaml --disable-hot-restart --concurrency 1 -l error & e=$!
for _ in $(seq 1 100); do curl -sf localhost:9902/ready >/dev/null && break; sleep 0.05; done
# One pass over the tokens, then stop: wrk has no request count, so run until the cache
# counters have seen them all (bounded at five minutes).
wrk -t1 -c"$CONNECTIONS" -d300s -s "$out/tokens.lua" http://127.0.0.1:8000/ > "$out/wrk-memory.txt" & w=$!
for _ in $(seq 1 600); do
  read -r h m <<<"$(cache_counts)"
  [ $((h + m)) -ge 100000 ] && break
  sleep 0.5
done
kill -INT $w; wait $w 2>/dev/null || true
echo "$(cache_counts) $(awk '/^VmHWM/ {print $2}' /proc/$ob/status) $(awk '/^VmRSS/ {print $2}' /proc/$ob/status)" > "$out/e2e-memory.txt"
kill $e $ob; wait $e $ob 2>/dev/null || true

python3 - <<'PY'
import re
def parse(name):
    t = open(f"target/bench/wrk-{name}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
    scale = {"us": 1, "ms": 1000, "s": 1e6}[p99.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    return rps, float(p99.group(1)) * scale, int(non2xx.group(1)) if non2xx else 0
plain, noop, authz = parse("plain"), parse("noop"), parse("authz")
print(f"envoy without ext_authz     : {plain[0]:8.0f} req/s  p99 {plain[1]:.0f} us")
print(f"envoy + no-op ext_authz     : {noop[0]:8.0f} req/s  p99 {noop[1]:.0f} us")
print(f"envoy + onbehalf            : {authz[0]:8.0f} req/s  p99 {authz[1]:.0f} us  non-2xx {authz[2]}")
print(f"onbehalf vs no ext_authz: throughput {authz[0]/plain[0]:.2f}x, p99 {authz[1]/plain[1]:.2f}x")
print(f"onbehalf vs no-op server: throughput {authz[0]/noop[0]:.2f}x, p99 {authz[1]/noop[1]:.2f}x")
h0, m0, h1, m1 = map(int, open("target/bench/e2e-hits.txt").read().split())
print(f"decision cache through Envoy (fresh x-request-id each): hit ratio {(h1-h0)/max(h1-h0+m1-m0,1):.4f} "
      f"({h1-h0} hits, {m1-m0} misses)")
h, m, hwm, rss = map(int, open("target/bench/e2e-memory.txt").read().split())
print(f"memory through Envoy: {h+m} checks, {m} distinct decisions; peak RSS {hwm/1024:.1f} MiB, "
      f"RSS at the end {rss/1024:.1f} MiB")
PY
