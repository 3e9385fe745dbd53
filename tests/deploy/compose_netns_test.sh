#!/usr/bin/env bash
# Runs compose_netns_test.py (Debian's python3 with python3-yaml) from the runfiles root.
exec python3 tests/deploy/compose_netns_test.py "$@"
