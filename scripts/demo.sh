#!/usr/bin/env bash
# Set everything up and run the demo: ./scripts/demo.sh [--duration SECONDS]
source "$(dirname "$0")/_env.sh"
exec churnwatch demo "$@"
