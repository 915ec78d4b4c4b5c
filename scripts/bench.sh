#!/usr/bin/env bash
# Runs every benchmark of the workspace and keeps their output:
#
#   1. the embedded broker (criterion): a raw receive/decode/ack loop against the worker with all
#      middleware off and all on;
#   2. the framework against a raw client loop of the same crate on each real backend (a private
#      redis-server, mosquitto and Apache Pulsar standalone JVM on free loopback ports, started by
#      the bench itself; Pulsar needs Java and Maven, see scripts/pulsar-standalone);
#   3. the bridge against raw loops moving the same messages (redis-server and Pulsar);
#   4. the shared state (credit ledgers, the global rate limit, idempotency records on Valkey and
#      PostgreSQL) against the in-memory counterparts;
#   5. a worker process's footprint: start to first message handled, idle resident memory.
#
# Usage: scripts/bench.sh [output-dir]       (default: target/bench-results)
# The BENCH_* variables of tests/benches/framework_vs_raw/main.rs pass through, e.g.
#   BENCH_BACKENDS=valkey BENCH_RUNS=5 scripts/bench.sh
# Set SKIP_MEMORY=1, SKIP_BACKENDS=1, SKIP_BRIDGE=1, SKIP_STATE=1 or SKIP_FOOTPRINT=1 to leave a part out.
set -euo pipefail

cd "$(dirname "$0")/.."
out="${1:-target/bench-results}"
mkdir -p "$out"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"

if [[ "${SKIP_MEMORY:-0}" != 1 ]]; then
    echo "== memory broker (criterion) -> $out/memory-$stamp.txt"
    cargo bench -p worker-runtime --bench memory_throughput 2>&1 | tee "$out/memory-$stamp.txt"
    echo "== in-memory credit ledger (criterion) -> $out/ledger-$stamp.txt"
    cargo bench -p worker-runtime --bench credit_ledger 2>&1 | tee "$out/ledger-$stamp.txt"
fi

if [[ "${SKIP_BACKENDS:-0}" != 1 ]]; then
    echo "== framework vs raw on valkey, mqtt and pulsar -> $out/backends-$stamp.txt"
    # The table goes to stdout, per-run progress to stderr; keep both.
    cargo bench -p integration-tests --bench framework_vs_raw 2>&1 | tee "$out/backends-$stamp.txt"
fi

if [[ "${SKIP_BRIDGE:-0}" != 1 ]]; then
    echo "== bridge vs raw loops -> $out/bridge-$stamp.txt"
    cargo bench -p integration-tests --bench bridge_forwarding 2>&1 | tee "$out/bridge-$stamp.txt"
fi

if [[ "${SKIP_STATE:-0}" != 1 ]]; then
    echo "== shared state vs in memory -> $out/shared-state-$stamp.txt"
    cargo bench -p integration-tests --bench shared_state_cost 2>&1 | tee "$out/shared-state-$stamp.txt"
fi

if [[ "${SKIP_FOOTPRINT:-0}" != 1 ]]; then
    echo "== footprint of a worker process -> $out/footprint-$stamp.txt"
    # The bench starts the release build of an example; build it first.
    cargo build --release -p examples --example scale_worker
    cargo bench -p integration-tests --bench footprint 2>&1 | tee "$out/footprint-$stamp.txt"
fi
