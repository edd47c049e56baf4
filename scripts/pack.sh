#!/usr/bin/env bash
# Packs every publishable package (packages/* and apps/*, private ones skipped) with `pnpm pack`
# into DEST (default .packs/, emptied first) and checks each tarball as a registry would serve it:
#   - no `workspace:` range is left in its package.json (pnpm pack turns `workspace:^` into ^x.y.z),
#   - publint --strict and attw (ESM-only profile) pass on the tarball itself (skipped with
#     IOVALINK_PACK_LINT=0, for callers that already ran `pnpm check:packages`).
# Needs a build (`pnpm build`) first: the tarballs carry dist/.
# Usage: scripts/pack.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
dest="${1:-$root/.packs}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
rm -f "$dest"/*.tgz
# the pnpm running this script if any (npx under `pnpm run` would warn about pnpm's npm_config_* env)
if [[ "${npm_execpath:-}" == *pnpm* ]]; then PNPM="node $npm_execpath"; else PNPM="npx -y pnpm@10.34.8"; fi
bin="$root/node_modules/.bin"

dirs=()
for d in packages/* apps/*; do
  [ -f "$d/package.json" ] || continue
  if [ "$(node -p "require('./$d/package.json').private === true")" = true ]; then continue; fi
  dirs+=("$d")
done

for d in "${dirs[@]}"; do
  [ -d "$d/dist" ] || { echo "pack: $d/dist is missing: run the build first (pnpm build)" >&2; exit 1; }
  (cd "$d" && $PNPM pack --pack-destination "$dest" >/dev/null)
done

fail=0
for t in "$dest"/*.tgz; do
  manifest="$(tar -xzOf "$t" package/package.json)"
  if grep -q '"workspace:' <<<"$manifest"; then
    echo "pack: $(basename "$t") still has a workspace: range in package.json:" >&2
    grep '"workspace:' <<<"$manifest" >&2
    fail=1
  fi
  [ "${IOVALINK_PACK_LINT:-1}" = 1 ] || continue
  echo "== $(basename "$t")"
  "$bin/publint" run "$t" --strict || fail=1
  "$bin/attw" "$t" --profile esm-only || fail=1
done
n="$(ls "$dest"/*.tgz | wc -l)"
[ "$n" -eq "${#dirs[@]}" ] || { echo "pack: expected ${#dirs[@]} tarballs in $dest, found $n" >&2; fail=1; }
[ "$fail" -eq 0 ] || exit 1
echo "pack: ${#dirs[@]} tarballs in $dest, checked"
