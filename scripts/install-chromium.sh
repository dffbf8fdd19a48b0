#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser test
# (ledger/dashboard: TestDashboardInBrowser*). Idempotent: does nothing when
# /usr/bin/chromium is already there. Needs root (or sudo) and apt.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
	exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# Only what chromium itself needs; the test runs it headless, no X server.
$SUDO apt-get install -y -q --no-install-recommends chromium
/usr/bin/chromium --version
