#!/bin/sh
# `npm test`: every test, the e2e suite against a real Postfix included, or a
# failure saying what is missing. RELAYCTL_SKIP_E2E=1 skips the e2e tests
# instead (said at the start and the end); `npm run test:unit` runs the unit
# tests alone. Extra arguments go to `bun test` (e.g. a file to run).
set -u
cd "$(dirname "$0")/.." || exit 1
sh test/prereqs.sh --check || exit 1
bun build.ts || exit 1
mkdir -p test-results && rm -f test-results/junit.xml
# The release artifacts are part of "every test", as in CI (about 30 s more).
RELAYCTL_TEST_RELEASE="${RELAYCTL_TEST_RELEASE-1}" bun test --timeout 120000 --reporter=junit --reporter-outfile=test-results/junit.xml "$@"
rc=$?
bun test/summary.ts test-results/junit.xml
exit "$rc"
