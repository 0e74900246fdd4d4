#!/usr/bin/env bash
# Soak: onbehalf under steady mixed traffic for SOAK_SECONDS (default 600), while its policy is
# swapped and its issuer's key set rotated every SWAP_SECONDS (default 15). It must answer every
# request as the corpus expects (zero errors, zero unexpected decisions) with flat memory.
#
#   benches/soak.sh             # writes target/soak/*.json and prints a summary
#
# Traffic: RATE requests per second (default 2000) from a corpus of 20,000 distinct tokens,
# cycled: token and decision caches see hits and misses, four in five allowed. Swaps: the
# policy directory gets a new revision (a comment changes, so decisions do not), and the JWKS
# the issuer serves (over HTTP, refreshed every 5 s) alternates between the signing key alone
# and the signing key plus a second one.
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS=${SOAK_SECONDS:-600}
SWAP_SECONDS=${SWAP_SECONDS:-15}
RATE=${RATE:-2000}
out=target/soak
mkdir -p "$out"
rm -f "$out"/*.json

cargo build --release --locked --bins
bin=target/release/onbehalf
load=target/release/onbehalf-load
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

wait_port() { for _ in $(seq 1 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

cp -r policies "$work/policies"
jwks_one="$(cat benches/jwks.json)"
jwks_two="$(python3 -c 'import json,sys; a=json.load(open("benches/jwks.json")); b=json.load(open("tests/fixtures/rsa-2.jwk.json")); a["keys"].append(b); print(json.dumps(a))')"
printf '%s' "$jwks_one" > "$work/jwks.json"
sed -e "s|dir: ../policies|dir: $work/policies|" \
  -e "s|jwks_file: jwks.json|jwks_uri: http://127.0.0.1:8399/jwks.json\n      jwks_ttl: 5s|" \
  benches/bench.yaml > "$work/onbehalf.yaml"
python3 -m http.server 8399 --bind 127.0.0.1 --directory "$work" >/dev/null 2>&1 & idp=$!
trap 'kill $idp 2>/dev/null; rm -rf "$work"' EXIT
wait_port 8399

$bin serve --config "$work/onbehalf.yaml" 2>"$out/onbehalf.log" & ob=$!
wait_port 9191
python3 -c 'import time, urllib.request
for _ in range(400):
    try:
        if urllib.request.urlopen("http://127.0.0.1:8181/readyz", timeout=1).status == 200: break
    except Exception: time.sleep(0.05)'
$load run --target 127.0.0.1:9191 --corpus cold --corpus-size 20000 --warmup 0 \
  --rate "$RATE" --duration "${SOAK_SECONDS}s" --requests 1000000000 --label soak --timeline \
  > "$out/soak-load.json" 2> "$out/soak-load.log" & soak=$!
while ! grep -q "corpus:" "$out/soak-load.log" 2>/dev/null; do sleep 1; done

samples=()
swaps=0
end=$((SECONDS + SOAK_SECONDS))
while [ $SECONDS -lt $end ] && kill -0 $soak 2>/dev/null; do
  sleep "$SWAP_SECONDS"
  swaps=$((swaps + 1))
  echo "# soak revision $swaps" >> "$work/policies/authz.rego"
  if [ $((swaps % 2)) -eq 1 ]; then printf '%s' "$jwks_two" > "$work/jwks.json.new"; else printf '%s' "$jwks_one" > "$work/jwks.json.new"; fi
  mv "$work/jwks.json.new" "$work/jwks.json"
  samples+=("$(rss_kib $ob)")
done
status=0
wait $soak || status=$?
activations=$(python3 -c 'import urllib.request; t=urllib.request.urlopen("http://127.0.0.1:8181/metrics").read().decode(); print(next((l.split()[-1] for l in t.splitlines() if l.startswith("onbehalf_policy_activations_total")), 0))')
echo "{\"label\": \"soak-rss-kib\", \"samples\": [$(IFS=,; echo "${samples[*]}")], \"peak_rss_kib\": $(hwm_kib $ob), \"swaps\": $swaps, \"policy_activations\": ${activations:-0}, \"load_exit\": $status}" > "$out/soak.json"
kill $ob; wait $ob 2>/dev/null || true

python3 - "$out" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
load = json.loads((d / "soak-load.json").read_text().strip().splitlines()[-1])
soak = json.loads((d / "soak.json").read_text())
mib = [round(s / 1024, 1) for s in soak["samples"]]
print(f"soak: {load['requests']} requests in {load['duration_s']:.0f}s ({load['throughput_rps']:.0f} req/s); "
      f"p50 {load['p50_us']} us p99 {load['p99_us']} us max {load['max_us']} us; "
      f"{load['errors']} errors, {load['mismatches']} unexpected decisions")
seconds = [l.split() for l in (d / "soak-load.log").read_text().splitlines() if l.startswith("timeline ")]
seconds = [{k: int(v) for k, v in (f.split("=") for f in l[1:])} for l in seconds]
if seconds:
    p50s = sorted(s["p50_us"] for s in seconds)
    worst = sorted(seconds, key=lambda s: s["p99_us"])[-3:]
    print(f"      per second: p50 from {p50s[0]} to {p50s[-1]} us (median {p50s[len(p50s) // 2]}); "
          f"worst p99 seconds: " + ", ".join(f"{s['second']}s {s['p99_us']} us" for s in worst))
print(f"      {soak['swaps']} policy swaps and key-set rotations ({soak['policy_activations']} activations); "
      f"RSS every swap (MiB): {mib}; peak {soak['peak_rss_kib'] / 1024:.1f} MiB")
sys.exit(1 if load["errors"] or load["mismatches"] or soak["load_exit"] else 0)
PY
