#!/usr/bin/env bash
# What telemetry costs on the hot path, all in one run so the figures compare: one serving
# thread (the load tool has the other core), the hot corpus, each configuration run twice in
# turn (A B C D A B C D) to spread the host's noise:
#   noop       a server answering OK without work (the ceiling)
#   off        onbehalf as benches/bench.yaml runs it (traces off: the default)
#   default    traces on at default settings (sampler.ratio 0.01; no Check carries a parent),
#              exported over OTLP/HTTP to a sink on loopback
#   all        traces on with sampler.ratio 1.0: every Check traced and exported
#   deadend    the same to an endpoint that refuses: spans built, then dropped at the queue
#   unsampled  traces on with sampler.ratio 0: what deciding not to trace costs
#   baseline   another build of onbehalf, traces off (BASELINE_BIN=path/to/onbehalf, e.g. one
#              built from the commit before telemetry): what the telemetry code costs off
# /metrics is always on. ROUNDS (default 2) and SCENARIOS (default all) narrow a run. Every request carries a fresh x-request-id, as Envoy stamps them.
#
#   benches/telemetry.sh      # writes target/bench/telemetry-*.json and prints ratios
#   BASELINE_BIN=/path/to/old/onbehalf SCENARIOS="noop baseline off" ROUNDS=3 benches/telemetry.sh
#   CORPUS=cold REQUESTS=50000 DURATION=600s SCENARIOS="baseline off" NO_BUILD=1 benches/telemetry.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
# CORPUS=cold: every request a new token and decision (caches filling, moka evicting).
CORPUS=${CORPUS:-hot}
REQUESTS=${REQUESTS:-5000000}
SCENARIOS=${SCENARIOS:-noop off default all deadend unsampled}
out=target/bench
mkdir -p "$out"
rm -f "$out"/telemetry-*.json

[ -n "${NO_BUILD:-}" ] || cargo build --release --locked --bins
bin=target/release/onbehalf
load=target/release/onbehalf-load
wait_port() { for _ in $(seq 1 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# The OTLP/HTTP sink: takes every export, counts the bytes, answers 200.
python3 - <<'PY' & sink=$!
import http.server
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 4318), Sink).serve_forever()
PY
trap 'kill $sink 2>/dev/null || true' EXIT
wait_port 4318

run_onbehalf() { # label, then env assignments
  local label=$1; shift
  env ONBEHALF_SERVER__WORKER_THREADS=1 "$@" "${BIN:-$bin}" serve --config benches/bench.yaml 2>/dev/null & local ob=$!
  wait_port 9191
  $load run --target 127.0.0.1:9191 --corpus "$CORPUS" --duration "$DURATION" \
    --requests "$REQUESTS" --label "$label" | tail -1 > "$out/telemetry-$label.json"
  kill $ob; wait $ob 2>/dev/null || true
}

traces=(ONBEHALF_TELEMETRY__TRACES__ENDPOINT=http://127.0.0.1:4318
        ONBEHALF_TELEMETRY__TRACES__PROTOCOL=http/protobuf)
for round in $(seq 1 "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    case $scenario in
      noop)
        $load noop --listen 127.0.0.1:9292 --threads 1 2>/dev/null & noop=$!
        wait_port 9292
        $load run --target 127.0.0.1:9292 --corpus "$CORPUS" --duration "$DURATION" --requests "$REQUESTS" \
          --expect false --label "noop-$round" | tail -1 > "$out/telemetry-noop-$round.json"
        kill $noop; wait $noop 2>/dev/null || true ;;
      off) run_onbehalf "off-$round" ;;
      baseline) BIN=$BASELINE_BIN run_onbehalf "baseline-$round" ;;
      default) run_onbehalf "default-$round" "${traces[@]}" ;;
      all) run_onbehalf "all-$round" "${traces[@]}" ONBEHALF_TELEMETRY__TRACES__SAMPLER__RATIO=1.0 ;;
      deadend) run_onbehalf "deadend-$round" ONBEHALF_TELEMETRY__TRACES__ENDPOINT=http://127.0.0.1:1 \
        ONBEHALF_TELEMETRY__TRACES__PROTOCOL=http/protobuf ONBEHALF_TELEMETRY__TRACES__SAMPLER__RATIO=1.0 ;;
      unsampled) run_onbehalf "unsampled-$round" "${traces[@]}" ONBEHALF_TELEMETRY__TRACES__SAMPLER__RATIO=0 ;;
    esac
  done
done

python3 - "$out" "$ROUNDS" $SCENARIOS <<'PY'
import json, pathlib, sys
d, rounds, scenarios = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
j = {p.stem.removeprefix("telemetry-"): json.loads(p.read_text()) for p in d.glob("telemetry-*.json")}
def mean(name, key): return sum(j[f"{name}-{r}"][key] for r in range(1, rounds + 1)) / rounds
for name in scenarios:
    line = f"{name:9}: {mean(name, 'throughput_rps'):8.0f} req/s  p99 {mean(name, 'p99_us'):6.0f} us"
    if "noop" in scenarios:
        line += f"   {mean(name, 'throughput_rps')/mean('noop', 'throughput_rps'):.2f}x the no-op"
    if "off" in scenarios:
        line += f"  {mean(name, 'throughput_rps')/mean('off', 'throughput_rps'):.3f}x traces off"
    print(line)
PY
