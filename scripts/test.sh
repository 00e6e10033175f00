#!/usr/bin/env bash
# weft's test suite: installs what the tests need (Debian packages), then runs the format check,
# clippy with warnings as errors, and every test of the workspace, including the privileged ones
# (network namespaces, TUN, a real etcd). Run as root on a fresh machine: scripts/test.sh
# (as a user with sudo, it re-runs itself with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then
    exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,WEFT_FUZZ_SECONDS "$0" "$@"
  fi
  echo "scripts/test.sh: run as root (the tests create network namespaces and TUN devices)" >&2
  exit 1
fi

# Debian packages the tests use: ip/bridge (iproute2), ping, iperf3 and sockperf (the benchmark
# harness's throughput and request/response tests), etcd + etcdctl, iptables,
# nft (nftables, for EnableNFTables), openssl (test certificates), ethtool (veth offload
# settings), dockerd + docker CLI (docker.io) and a static busybox for the offline container
# image (busybox-static), wireguard-go and wg (wireguard-tools) for the wireguard interop tests;
# and what the build needs (protoc and protobuf's .proto includes for
# etcd-client's build, cc).
. scripts/lib/packages.sh
# shellcheck disable=SC2207
packages=(iproute2 iputils-ping iperf3 sockperf etcd-server etcd-client iptables nftables openssl
  ethtool docker.io busybox-static wireguard-go wireguard-tools $(build_packages))
ensure_packages "$(mktemp)" "${packages[@]}"
# Debian's etcd-server and docker.io start services on hosts with systemd; the tests start their
# own etcd on free ports and their own dockerd in test namespaces (own sockets and directories).

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> cargo test"
test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
cargo test --workspace --release 2>&1 | tee "$test_log"

echo "==> criterion benches build"
cargo bench --workspace --no-run

echo "==> benchmark harness, smoke mode (one round, a few seconds per test)"
cargo build --release --bin weft --bin weft-bench
target/release/weft-bench --smoke --out target/weft-bench-smoke

echo "==> demo cluster (the README's main command)"
scripts/demo.sh

echo "==> fuzz (every target, ${WEFT_FUZZ_SECONDS:-30} s each)"
fuzz/run.sh "${WEFT_FUZZ_SECONDS:-30}"

# One closing line for the whole suite (cargo prints one result line per test binary).
awk '/^test result: / { p += $4; f += $6 } END { printf "weft: %d passed, %d failed\n", p, f }' "$test_log"
