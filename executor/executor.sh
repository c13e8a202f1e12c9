#!/bin/sh
# Kaniko's binary path: `/kaniko/executor --context ... --destination ...` is `buildgraph executor`.
exec buildgraph executor "$@"
