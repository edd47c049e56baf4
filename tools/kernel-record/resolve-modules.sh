#!/usr/bin/env bash
# Prints the module files (paths relative to the modules directory) needed to load each named
# module, dependencies first, each once, from modules.dep: resolve-modules.sh <modules-dir> <name>...
set -euo pipefail
dir="$1"; shift
declare -A seen=()
emit() {
  local rel="$1" line deps d
  [ -n "${seen[$rel]:-}" ] && return 0
  seen[$rel]=1
  line="$(grep -E "^${rel//./\\.}:" "$dir/modules.dep" || true)"
  deps="${line#*:}"
  # modules.dep lists a module's dependencies so that the last one must load first
  for d in $(echo $deps | tr ' ' '\n' | tac); do emit "$d"; done
  echo "$rel"
}
for name in "$@"; do
  rel="$(grep -oE "^[^:]*/${name//-/[-_]}\.ko(\.[a-z]+)?:" "$dir/modules.dep" | head -1 | tr -d ':')"
  [ -n "$rel" ] || { echo "resolve-modules.sh: module '$name' not in $dir/modules.dep" >&2; exit 1; }
  emit "$rel"
done
