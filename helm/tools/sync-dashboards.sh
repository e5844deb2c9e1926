#!/usr/bin/env bash
# Copies grafana/dashboards/*.json into the chart (Helm can only read files inside the chart dir).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SRC="$ROOT/grafana/dashboards"
DST="$ROOT/helm/switchyard/dashboards"
mkdir -p "$DST"
find "$DST" -maxdepth 1 -name '*.json' -delete
shopt -s nullglob
files=("$SRC"/*.json)
for f in "${files[@]}"; do cp "$f" "$DST/"; done
echo "[sync-dashboards] ${#files[@]} dashboard(s) copied from grafana/dashboards to helm/switchyard/dashboards"
