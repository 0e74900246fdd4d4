#!/usr/bin/env bash
# Load benchmarks, all in one run so the figures compare: the no-op ext_authz server (the
# ceiling on this machine), then onbehalf with the hot and cold corpora, start-up time to
# /readyz, peak memory, and memory under a one-minute flood of unique tokens.
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

cargo build --release --locked --bins
bin=target/release/onbehalf
load=target/release/onbehalf-load

wait_port() { for _ in $(seq 1 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

# 1. The ceiling: a server that answers OK without work.
$load noop --listen 127.0.0.1:9292 2>/dev/null & noop=$!
wait_port 9292
$load run --target 127.0.0.1:9292 --corpus hot --duration "$DURATION" --requests 5000000 \
  --expect false --label noop-hot | tail -1 > "$out/noop-hot.json"
kill $noop; wait $noop 2>/dev/null || true

# 2. onbehalf: start-up time to /readyz (from the exec, measured by python).
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

$bin serve --config benches/bench.yaml 2>/dev/null & ob=$!
wait_port 9191
$load run --target 127.0.0.1:9191 --corpus hot --duration "$DURATION" --requests 5000000 \
  --label onbehalf-hot | tail -1 > "$out/onbehalf-hot.json"
$load run --target 127.0.0.1:9191 --corpus cold --duration 600s --requests "$COLD_REQUESTS" \
  --label onbehalf-cold | tail -1 > "$out/onbehalf-cold.json"
echo "{\"label\": \"memory-after-cold\", \"rss_kib\": $(rss_kib $ob), \"peak_rss_kib\": $(hwm_kib $ob)}" > "$out/memory.json"

# 3. A flood of unique tokens for a minute: 120,000 tokens (12x the token cache) cycled, RSS
#    sampled every 5 s must level off (bounded caches).
samples=()
$load run --target 127.0.0.1:9191 --corpus cold --duration "${FLOOD_SECONDS}s" --requests 100000000 \
  --corpus-size 120000 --warmup 0 --label flood > "$out/flood.log" 2>&1 &
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
noop, hot, cold = j["noop-hot"], j["onbehalf-hot"], j["onbehalf-cold"]
print(f"noop  hot : {noop['throughput_rps']:8.0f} req/s  p99 {noop['p99_us']} us")
print(f"onbeh hot : {hot['throughput_rps']:8.0f} req/s  p99 {hot['p99_us']} us   "
      f"throughput {hot['throughput_rps']/noop['throughput_rps']:.2f}x  p99 {hot['p99_us']/noop['p99_us']:.2f}x")
print(f"onbeh cold: {cold['throughput_rps']:8.0f} req/s  p99 {cold['p99_us']} us   "
      f"throughput {cold['throughput_rps']/noop['throughput_rps']:.2f}x")
print(f"startup to /readyz: max {j['startup']['max_ms']:.1f} ms over {len(j['startup']['runs_ms'])} runs")
print(f"peak RSS after cold ({cold['requests']} unique tokens): {j['memory']['peak_rss_kib']/1024:.1f} MiB")
print(f"flood RSS samples (MiB): {[round(s/1024,1) for s in j['flood']['samples']]}")
PY
