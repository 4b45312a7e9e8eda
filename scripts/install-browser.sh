#!/usr/bin/env bash
# Install a headless browser for tests/test_mlflow_ui.py: Debian's Chromium and ChromeDriver
# (/usr/bin/chromium, /usr/bin/chromedriver). Playwright drives that Chromium through executable_path;
# never run `playwright install` (its browser download fails on machines without internet).
#
# Idempotent: does nothing when both are installed. Needs root; without root it prints a message and exits 0
# (the test then skips, unless CI is set).
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "install-browser: chromium and chromedriver already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-browser: not root; install Debian's chromium and chromium-driver yourself (tests/test_mlflow_ui.py skips without them)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
echo "install-browser: installed $(chromium --version 2>/dev/null | head -1)"
