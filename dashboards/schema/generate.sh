#!/usr/bin/env bash
# Regenerates dashboard.schema.json from Grafana's own published TypeScript
# types (npm @grafana/schema, the classic dashboard model used by file
# provisioning) with ts-json-schema-generator. Needs node and npm; the result
# is committed so tests need neither.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
cd "$work"
npm install --silent --no-audit --no-fund @grafana/schema@13 ts-json-schema-generator@2 typescript@5
npx ts-json-schema-generator \
  --path node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts \
  --type Dashboard --no-type-check --expose none \
  -o "$here/dashboard.schema.json"
echo "wrote $here/dashboard.schema.json from @grafana/schema $(node -p 'require("@grafana/schema/package.json").version')"
