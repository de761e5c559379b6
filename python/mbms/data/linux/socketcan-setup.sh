#!/bin/sh
# Bring up the peer CAN bus for mbms (classic CAN, 500 kbit/s; see mbms/data/systems/example_system.toml).
# For CAN FD: ip link set "$IF" type can bitrate 500000 dbitrate 2000000 fd on  (and fd = true).
set -eu
IF="${1:-can0}"
ip link set "$IF" down 2>/dev/null || true
ip link set "$IF" type can bitrate 500000 restart-ms 100
ip link set "$IF" txqueuelen 128
ip link set "$IF" up
