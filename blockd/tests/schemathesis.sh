#!/usr/bin/env bash
# Runs schemathesis against a served Basalt OpenAPI document, bounded in examples and time.
#   bash blockd/tests/schemathesis.sh http://127.0.0.1:9640/v1/openapi.json
# The admin token comes from BASALT_TOKEN. Installs schemathesis with pip when missing
# (4.x; checked with 4.32.5 on Python 3.11). SCHEMATHESIS_MAX_EXAMPLES (default 100) bounds
# the examples per operation; SCHEMATHESIS_MAX_TIME (seconds) optionally caps the run (with
# it, fuzzing and stateful phases repeat until the time is spent); SCHEMATHESIS_SEED (default 1)
# picks the generated cases.
#
# Checks: all but two whose premise the API contradicts on purpose:
# - `positive_data_acceptance` expects any schema-valid request to succeed; valid-looking
#   requests are legitimately refused by the cluster's state (a name that exists, more
#   replicas than nodes, a cluster initialised already, a shrink).
# - `ensure_resource_availability` expects a 201 from a create to mean the resource exists
#   now; a create repeated with an `Idempotency-Key` returns the first result even if that
#   volume was deleted since (docs/api.md), and schemathesis reuses keys.
set -euo pipefail

url=${1:?usage: schemathesis.sh OPENAPI_URL}
: "${BASALT_TOKEN:?set BASALT_TOKEN to an admin token}"
python=${PYTHON:-python3}

if ! "$python" -m schemathesis.cli --version >/dev/null 2>&1; then
    "$python" -m pip install --quiet --disable-pip-version-check schemathesis
fi

# Reports and schemathesis' own cache go to a scratch directory, not the checkout.
report_dir=$(mktemp -d)
trap 'rm -rf "$report_dir"' EXIT
cd "$report_dir"

"$python" -m schemathesis.cli run "$url" \
    --header "Authorization: Bearer $BASALT_TOKEN" \
    --checks all \
    --exclude-checks positive_data_acceptance,ensure_resource_availability \
    --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-100}" \
    ${SCHEMATHESIS_MAX_TIME:+--max-time "$SCHEMATHESIS_MAX_TIME"} \
    --seed "${SCHEMATHESIS_SEED:-1}" \
    --workers 1 \
    --request-timeout 10 \
    --generation-database none \
    --report-dir "$report_dir" \
    --no-color
