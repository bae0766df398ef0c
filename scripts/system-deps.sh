#!/bin/sh
# The system packages Tide's tests use, from Debian: runc (the container sandbox), chromium
# (the browser tests of HTML reports, driven by playwright-core) and prometheus (promtool checks
# every /metrics; one test has a real Prometheus server scrape Tide) and etcd-server (the cluster
# store's tests and the cluster end-to-end test run real etcd members).
# Installed when missing and this runs as root with apt-get; otherwise it says what to install.
set -eu
missing=""
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing="$missing runc"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
[ -x /usr/bin/etcd ] || missing="$missing etcd-server"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages:$missing" >&2
  if ! apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1
    apt-get install -y -q --no-install-recommends $missing >/dev/null
  fi
else
  echo "tide: the container sandbox, browser, metrics and cluster tests need:$missing (apt-get install$missing, as root)" >&2
fi
