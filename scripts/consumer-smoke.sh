#!/usr/bin/env bash
# Consumer smoke test: what a user gets from the registry. Packs every publishable package
# (scripts/pack.sh), installs the tarballs with plain npm into a scratch project OUTSIDE the
# workspace (mktemp -d), then
#   - runs consumer-smoke/example.mjs (ESM, every package's main entry, results checked),
#   - runs the installed `iovalink` bin (--version),
#   - type-checks consumer-smoke/example.ts with tsc --noEmit (module/moduleResolution nodenext,
#     strict, lib checks on),
# failing on a missing file, export or type. Needs a build first (`pnpm build`).
# Usage: scripts/consumer-smoke.sh          (IOVALINK_SMOKE_KEEP=1 keeps the scratch directory)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
scratch="$(mktemp -d)"
cleanup() { if [ "${IOVALINK_SMOKE_KEEP:-0}" = 1 ]; then echo "consumer smoke: kept $scratch"; else rm -rf "$scratch"; fi; }
trap cleanup EXIT

case "$scratch" in "$root"/*) echo "consumer smoke: scratch dir $scratch is inside the workspace" >&2; exit 1 ;; esac

IOVALINK_PACK_LINT=0 bash scripts/pack.sh "$scratch/packs"

mkdir "$scratch/app"
cp scripts/consumer-smoke/example.mjs scripts/consumer-smoke/example.ts "$scratch/app/"
cat >"$scratch/app/package.json" <<'JSON'
{ "name": "iovalink-consumer-smoke", "version": "0.0.0", "private": true, "type": "module" }
JSON
cat >"$scratch/app/tsconfig.json" <<'JSON'
{
  "compilerOptions": {
    "target": "ES2022",
    "lib": ["ES2023", "ES2024.SharedMemory"],
    "module": "nodenext",
    "moduleResolution": "nodenext",
    "strict": true,
    "skipLibCheck": false,
    "types": ["node"],
    "noEmit": true
  },
  "files": ["example.ts"]
}
JSON
ts_version="$(node -p "require('$root/node_modules/typescript/package.json').version")"
types_node="$(node -p "require('$root/node_modules/@types/node/package.json').version")"
cd "$scratch/app"
# plain npm from a clean environment: no pnpm npm_config_* variables leak into it
env -u npm_config_user_agent -u npm_execpath $(env | sed -n 's/^\(npm_[^=]*\)=.*/-u \1/p') \
  npm install --no-audit --no-fund --loglevel=error \
  "$scratch"/packs/*.tgz "typescript@$ts_version" "@types/node@$types_node"
echo "== consumer smoke: ESM example"
node example.mjs
echo "== consumer smoke: the installed iovalink bin"
v="$(./node_modules/.bin/iovalink --version)"
want="$(node -p "require('iovalink/package.json').version")"
[ "$v" = "$want" ] || { echo "consumer smoke: iovalink --version printed '$v', expected '$want'" >&2; exit 1; }
echo "iovalink --version: $v"
echo "== consumer smoke: tsc --noEmit (nodenext, strict) over the TypeScript example"
./node_modules/.bin/tsc -p tsconfig.json
echo "consumer smoke: ok ($(ls "$scratch"/packs/*.tgz | wc -l) tarballs, installed outside the workspace at $scratch)"
