#!/bin/sh
# Rebuilds scoreboard.wasm from scoreboard.ts with AssemblyScript (npm).
# CI does not run this: the module is committed, and tests use it as is.
set -eu
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm init -y >/dev/null && npm install --no-audit --no-fund assemblyscript@0.28.20 >/dev/null)
"$work/node_modules/.bin/asc" scoreboard.ts -o scoreboard.wasm \
  --runtime stub --use abort=scoreboard/abort -O3 --noAssert
echo "built $(wc -c < scoreboard.wasm) bytes: scoreboard.wasm"
