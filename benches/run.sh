#!/usr/bin/env bash
# Load benchmarks, all in one run so the figures compare: start-up time to /readyz; for one
# and for two serving threads, the no-op ext_authz server (the ceiling on this machine) and
# onbehalf with the hot and cold corpora, and peak memory; an OPA-Envoy-style policy (names
# bound to the request, benches/policies/aliased.rego) next to the same policy spelled out;
# then memory under a one-minute flood of unique tokens, valid and forged. Every request carries a fresh
# x-request-id, as Envoy stamps them (the load tool's default).
#
#   benches/run.sh            # writes target/bench/*.json and prints a summary
#
# Every load is bounded in time and count, on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
COLD_REQUESTS=${COLD_REQUESTS:-100000}
FLOOD_SECONDS=${FLOOD_SECONDS:-60}
out=target/bench
mkdir -p "$out"
rm -f "$out"/*.json

cargo build --release --locked --bins
bin=target/release/onbehalf
load=target/release/onbehalf-load

wait_port() { for _ in $(seq 1 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Decision-cache hits and misses so far, from /metrics.
cache_counts() {
  curl -s localhost:8181/metrics | awk '/^onbehalf_decision_cache_total\{result="hit"\}/ {h=$2}
    /^onbehalf_decision_cache_total\{result="miss"\}/ {m=$2} END {printf "%d, %d", h, m}'
}
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

# 1. Start-up time to /readyz (from the exec, measured by python).
python3 - "$bin" > "$out/startup.json" <<'PY'
import json, subprocess, sys, time, urllib.request
runs = []
for _ in range(5):
    t0 = time.monotonic()
    p = subprocess.Popen([sys.argv[1], "serve", "--config", "benches/bench.yaml"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if urllib.request.urlopen("http://127.0.0.1:8181/readyz", timeout=1).status == 200:
                break
        except Exception:
            time.sleep(0.001)
    runs.append((time.monotonic() - t0) * 1000)
    p.terminate(); p.wait()
print(json.dumps({"label": "startup-to-readyz", "runs_ms": runs, "max_ms": max(runs)}))
PY

# 2. For one serving thread (the load tool has the other core to itself) and for two (one per
#    core, the default here, shared with the load tool): the ceiling, a server answering OK
#    without work on as many threads, then onbehalf with the hot and the cold corpus. The cold
#    run fills the caches (100,000 new tokens and decisions), so peak memory is read after it.
for t in 1 2; do
  $load noop --listen 127.0.0.1:9292 --threads $t 2>/dev/null & noop=$!
  wait_port 9292
  $load run --target 127.0.0.1:9292 --corpus hot --duration "$DURATION" --requests 5000000 \
    --expect false --label "noop-hot-$t" | tail -1 > "$out/noop-hot-$t.json"
  kill $noop; wait $noop 2>/dev/null || true

  ONBEHALF_SERVER__WORKER_THREADS=$t $bin serve --config benches/bench.yaml 2>/dev/null & ob=$!
  wait_port 9191
  before=$(cache_counts)
  $load run --target 127.0.0.1:9191 --corpus hot --duration "$DURATION" --requests 5000000 \
    --label "onbehalf-hot-$t" | tail -1 > "$out/onbehalf-hot-$t.json"
  echo "{\"before\": [$before], \"after\": [$(cache_counts)]}" > "$out/hits-onbehalf-hot-$t.json"
  $load run --target 127.0.0.1:9191 --corpus cold --duration 600s --requests "$COLD_REQUESTS" \
    --label "onbehalf-cold-$t" | tail -1 > "$out/onbehalf-cold-$t.json"
  echo "{\"label\": \"memory-after-cold-$t\", \"rss_kib\": $(rss_kib $ob), \"peak_rss_kib\": $(hwm_kib $ob)}" > "$out/memory-$t.json"
  kill $ob; wait $ob 2>/dev/null || true
done

# 2b. The OPA-Envoy-style policy and the same policy spelled out (benches/policies), one
#     serving thread: hot, and cold for the aliased one, with the decision cache's hits and
#     misses over each hot run.
for p in aliased spelled; do
  ONBEHALF_SERVER__WORKER_THREADS=1 ONBEHALF_POLICY__DIR="$PWD/benches/policies" \
    ONBEHALF_POLICY__QUERY="data.bench.$p.allow" $bin serve --config benches/bench.yaml 2>/dev/null & ob=$!
  wait_port 9191
  before=$(cache_counts)
  $load run --target 127.0.0.1:9191 --corpus hot --duration "$DURATION" --requests 5000000 \
    --label "$p-hot-1" | tail -1 > "$out/$p-hot-1.json"
  echo "{\"before\": [$before], \"after\": [$(cache_counts)]}" > "$out/hits-$p-hot-1.json"
  if [ "$p" = aliased ]; then
    $load run --target 127.0.0.1:9191 --corpus cold --duration 600s --requests "$COLD_REQUESTS" \
      --label "$p-cold-1" | tail -1 > "$out/$p-cold-1.json"
  fi
  kill $ob; wait $ob 2>/dev/null || true
done

# 3. Minting on (ES256 key made at start, reuse on), one serving thread: the hot and cold
#    corpora again, next to the figures with minting off above.
ONBEHALF_SERVER__WORKER_THREADS=1 ONBEHALF_MINT__ENABLED=true ONBEHALF_MINT__ISSUER=https://sidecar.bench \
  $bin serve --config benches/bench.yaml 2>/dev/null & ob=$!
wait_port 9191
$load run --target 127.0.0.1:9191 --corpus hot --duration "$DURATION" --requests 5000000 \
  --label "onbehalf-mint-hot-1" | tail -1 > "$out/onbehalf-mint-hot-1.json"
$load run --target 127.0.0.1:9191 --corpus cold --duration 600s --requests "$COLD_REQUESTS" \
  --label "onbehalf-mint-cold-1" | tail -1 > "$out/onbehalf-mint-cold-1.json"
kill $ob; wait $ob 2>/dev/null || true

# 4. A flood of unique tokens for a minute on the default threads: 120,000 tokens (12x the
#    token cache) cycled, every second one with a broken signature (a 401, never cached),
#    RSS sampled every 5 s must level off (bounded caches).
$bin serve --config benches/bench.yaml 2>/dev/null & ob=$!
wait_port 9191
samples=()
$load run --target 127.0.0.1:9191 --corpus cold --duration "${FLOOD_SECONDS}s" --requests 100000000 \
  --corpus-size 120000 --forged-every 2 --warmup 0 --label flood > "$out/flood.log" 2>&1 &
flood=$!
# The flood signs its tokens first; sample once it is sending.
while ! grep -q "corpus:" "$out/flood.log" 2>/dev/null; do sleep 1; done
for _ in $(seq 1 $((FLOOD_SECONDS / 5))); do sleep 5; samples+=("$(rss_kib $ob)"); done
wait $flood || true
echo "{\"label\": \"flood-rss-kib\", \"samples\": [$(IFS=,; echo "${samples[*]}")], \"peak_rss_kib\": $(hwm_kib $ob)}" > "$out/flood.json"
kill $ob; wait $ob 2>/dev/null || true

python3 - "$out" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
j = {p.stem: json.loads(p.read_text()) for p in d.glob("*.json")}
ceiling = max(j[f"noop-hot-{t}"]["throughput_rps"] for t in (1, 2))
for t in (1, 2):
    noop, hot, cold = j[f"noop-hot-{t}"], j[f"onbehalf-hot-{t}"], j[f"onbehalf-cold-{t}"]
    print(f"{t} thread(s)")
    print(f"  noop  hot : {noop['throughput_rps']:8.0f} req/s  p99 {noop['p99_us']} us")
    print(f"  onbeh hot : {hot['throughput_rps']:8.0f} req/s  p99 {hot['p99_us']} us   "
          f"throughput {hot['throughput_rps']/noop['throughput_rps']:.2f}x  p99 {hot['p99_us']/noop['p99_us']:.2f}x")
    print(f"  onbeh cold: {cold['throughput_rps']:8.0f} req/s  p99 {cold['p99_us']} us   "
          f"throughput {cold['throughput_rps']/noop['throughput_rps']:.2f}x "
          f"({cold['throughput_rps']/ceiling:.2f}x the best no-op)")
    print(f"  peak RSS after cold ({cold['requests']} unique tokens): "
          f"{j[f'memory-{t}']['peak_rss_kib']/1024:.1f} MiB")
def hit_ratio(name):
    h = j[f"hits-{name}"]
    hits, misses = h["after"][0] - h["before"][0], h["after"][1] - h["before"][1]
    return hits / max(hits + misses, 1)
print(f"  shipped policy hot: decision-cache hit ratio {hit_ratio('onbehalf-hot-1'):.4f}")
noop1 = j["noop-hot-1"]["throughput_rps"]
for p in ("aliased", "spelled"):
    hot = j[f"{p}-hot-1"]
    print(f"  {p:8} policy hot : {hot['throughput_rps']:8.0f} req/s  p99 {hot['p99_us']} us   "
          f"throughput {hot['throughput_rps']/noop1:.2f}x the no-op  hit ratio {hit_ratio(p + '-hot-1'):.4f}")
print(f"  aliased vs spelled, hot: {j['aliased-hot-1']['throughput_rps']/j['spelled-hot-1']['throughput_rps']:.2f}x")
cold = j["aliased-cold-1"]
print(f"  aliased  policy cold: {cold['throughput_rps']:8.0f} req/s  p99 {cold['p99_us']} us   "
      f"throughput {cold['throughput_rps']/noop1:.2f}x the no-op")
for corpus in ("hot", "cold"):
    off, on = j[f"onbehalf-{corpus}-1"], j[f"onbehalf-mint-{corpus}-1"]
    extra_us = 1e6 / on["throughput_rps"] - 1e6 / off["throughput_rps"]
    print(f"  mint on {corpus:4}: {on['throughput_rps']:8.0f} req/s  p99 {on['p99_us']} us   "
          f"{on['throughput_rps']/off['throughput_rps']:.2f}x minting off "
          f"(+{extra_us:.1f} us of the serving thread per request)")
print(f"startup to /readyz: max {j['startup']['max_ms']:.1f} ms over {len(j['startup']['runs_ms'])} runs")
print(f"flood RSS samples (MiB): {[round(s/1024,1) for s in j['flood']['samples']]}")
PY
