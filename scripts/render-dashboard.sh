#!/usr/bin/env bash
# Renders docs/dashboard.png from a real run: the demo with its simulated traffic, a real Prometheus
# scraping it every 2 s with the rules loaded, then dashboard-render drawing every panel of
# dashboards/switchboard.json from Prometheus. Run scripts/test.sh once first (it unpacks
# promtool and prometheus into target/prometheus). Usage: bash scripts/render-dashboard.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-5}"
prometheus="${SWITCHBOARD_PROMETHEUS:-$PWD/target/prometheus/usr/bin/prometheus}"
[ -x "$prometheus" ] || { echo "no prometheus at $prometheus: run bash scripts/test.sh first" >&2; exit 1; }
cargo build --bin switchboard --bin dashboard-render

work="$(mktemp -d)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

target/debug/switchboard demo --agents 20 --calls-per-sec 2 \
  --grpc-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 >"$work/demo.out" 2>"$work/demo.log" &
pids+=($!)
for _ in $(seq 100); do grep -q 'metrics:' "$work/demo.out" && break; sleep 0.2; done
metrics="$(sed -n 's#.*metrics: *http://\([^/]*\)/metrics.*#\1#p' "$work/demo.out")"
[ -n "$metrics" ] || { echo "the demo did not start:" >&2; cat "$work/demo.log" >&2; exit 1; }

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat >"$work/prometheus.yml" <<YAML
global: {scrape_interval: 2s, evaluation_interval: 2s}
rule_files: ['$PWD/dashboards/rules.yml', '$PWD/dashboards/alerts.yml']
scrape_configs:
  - job_name: switchboard
    static_configs:
      - targets: ['$metrics']
        labels: {cluster: demo, instance: gw-1}
YAML
"$prometheus" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$port" 2>"$work/prometheus.log" &
pids+=($!)
echo "demo metrics at $metrics, prometheus at 127.0.0.1:$port; recording for $minutes minutes"
sleep "$((minutes * 60))"
target/debug/dashboard-render --prometheus "127.0.0.1:$port" --dashboard dashboards/switchboard.json \
  --out docs/dashboard.png --minutes "$minutes" --cluster demo --instance gw-1
