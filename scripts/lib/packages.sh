# Sourced by scripts/demo.sh and scripts/test.sh: installs the Debian packages a script needs and
# checks the build's own prerequisites, so that a missing one stops the script with one line that
# names its package instead of a page of build output.

# ensure_packages LOG PACKAGE…: installs what is not installed yet (apt-get, no recommends: every
# package the build needs is named explicitly), then checks the build prerequisites.
ensure_packages() {
  local log=$1 p
  shift
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> installing ${missing[*]} (apt-get)"
    if ! { apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
      >"$log" 2>&1; then
      tail -n 20 "$log" >&2
      echo "$0: apt-get install ${missing[*]} failed (log above)" >&2
      exit 1
    fi
  fi
  check_build_prerequisites
}

# The build runs protoc (etcd-client's build script), which needs protobuf's well-known types
# (google/protobuf/descriptor.proto, shipped by libprotobuf-dev), and links with cc.
check_build_prerequisites() {
  command -v protoc >/dev/null || { echo "$0: protoc not found: install the Debian package protobuf-compiler" >&2; exit 1; }
  [ -r /usr/include/google/protobuf/descriptor.proto ] ||
    { echo "$0: google/protobuf/descriptor.proto not found: install the Debian package libprotobuf-dev" >&2; exit 1; }
  command -v cc >/dev/null || { echo "$0: no C compiler (cc): install the Debian package gcc" >&2; exit 1; }
}

# build_packages: what the build itself needs from Debian.
build_packages() {
  local p=(protobuf-compiler libprotobuf-dev)
  command -v cc >/dev/null || p+=(gcc libc6-dev)
  echo "${p[@]}"
}
