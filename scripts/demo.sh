#!/usr/bin/env bash
# npm run demo: pgtimewarp's whole story on a throwaway cluster, from a fresh
# clone.  Installs the npm packages when they are missing (npm ci also builds
# dist/ through the prepare script), rebuilds dist/ when a source is newer,
# then runs `pgtimewarp demo --install-deps`, which brings the extension's
# build dependencies with apt-get when they are missing.
# Options go after --:  npm run demo -- --keep
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v node >/dev/null 2>&1; then
  echo "npm run demo: node is not on the PATH; install Node.js 20 or later" >&2
  exit 1
fi

if [ ! -d node_modules ]; then
  echo "npm run demo: installing the npm packages (npm ci) and building ..."
  npm ci --no-audit --no-fund
fi

cli=dist/installer/cli.js
if [ ! -f "$cli" ] || [ -n "$(find installer agent -name '*.ts' -newer "$cli" -print -quit)" ]; then
  echo "npm run demo: building (npm run build) ..."
  npm run --silent build
fi

exec node "$cli" demo --install-deps "$@"
