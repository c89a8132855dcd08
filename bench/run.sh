#!/bin/sh
# The aigw benchmark suite, one command (details: bench/suite.py):
#
#   bench/run.sh            full run, ~15 minutes on 2 cores: report on stdout,
#                           raw numbers in bench/results/latest.json (+ latest.md)
#   bench/run.sh --quick    ~3 minute smoke run
#   bench/run.sh --only attacks   issue 9's attacks against aigw and nginx, ~5 minutes
#   bench/run.sh --only models    model routing vs path routing, CPU per request, ~2 minutes
#   bench/run.sh --help     options (--only SCENARIO, --rounds, --duration, --streams, ...)
#
# Installs wrk and nginx-light with apt-get when missing (needs root); the Python
# side runs in the project's .venv, created by `make` if it is not there yet.
set -eu
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make .venv/.installed >&2
exec .venv/bin/python bench/suite.py "$@"
