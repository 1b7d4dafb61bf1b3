# Sourced by scripts/lab and scripts/test: installs what a fresh Debian 12 machine (root, Rust,
# iproute2) lacks. Only packages are installed; nothing in the root network namespace changes
# (Debian's radvd package does not start a daemon without a config of its own, and the tests
# run theirs inside namespaces with a private config).

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "$1 needs root: it creates network namespaces (try: sudo $0)" >&2
    exit 1
  fi
}

# ensure_deps [EXTRA...]: what the lab needs, and each EXTRA: a command that only some tests use,
# installed from the Debian package of the same name when missing (scripts/test asks for
# `radvd`, ISPs that send router advertisements, and `socat`; scripts/lab asks for none).
ensure_deps() {
  local missing=()
  local extra
  for extra in "$@"; do
    case "$extra" in
      radvd | socat) command -v "$extra" >/dev/null 2>&1 || missing+=("$extra") ;;
      *) echo "ensure_deps: unknown extra $extra (add it to scripts/deps.sh)" >&2; exit 1 ;;
    esac
  done
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v tc >/dev/null 2>&1 || missing+=(iproute2)
  # The benchmarks compare multiwan with the seed's iptables script (iptables-nft).
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  # The footprint benchmark's reference prober: iputils ping sending the same probes.
  command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
  # The footprint benchmark gives the ISPs' side of each link a NAPI thread (ethtool -K).
  command -v ethtool >/dev/null 2>&1 || missing+=(ethtool)
  # The real clients the suite runs in its namespaces (tests/clients.rs). dnsmasq-base, not
  # dnsmasq: the latter would start a DNS/DHCP service in the root namespace.
  command -v dnsmasq >/dev/null 2>&1 || missing+=(dnsmasq-base)
  command -v dhclient >/dev/null 2>&1 || missing+=(isc-dhcp-client)
  command -v dhcpcd >/dev/null 2>&1 || missing+=(dhcpcd-base)
  command -v socat >/dev/null 2>&1 || missing+=(socat)
  # The package and systemd tests: a fresh Debian root (debootstrap), systemd as its PID 1
  # (systemd-nspawn), and the package's lint.
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
  command -v lintian >/dev/null 2>&1 || missing+=(lintian)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    local log
    log=$(mktemp)
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
      cat "$log" >&2
      rm -f "$log"
      echo "could not install ${missing[*]}" >&2
      exit 1
    fi
    rm -f "$log"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
  fi
}

# release_target: prints the target triple of the router's release build, adding it with
# rustup on first use. The router ships as a static musl binary: no shared libc or loader is
# mapped into the daemon (idle RSS with 2 uplinks, same code: 4.5 MiB glibc, 2.7 MiB musl;
# ARCHITECTURE.md, "Size"). Where rustup cannot add the target (offline, or Rust not from
# rustup) the build falls back to the host's glibc target, saying so: the same router, ~2 MiB
# more resident.
release_target() {
  local musl host
  musl="$(uname -m)-unknown-linux-musl"
  if command -v rustup >/dev/null 2>&1; then
    if rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
      echo "$musl"
      return
    fi
    echo "adding the Rust target $musl (rustup) ..." >&2
    local log
    log=$(mktemp)
    if rustup target add "$musl" >"$log" 2>&1; then
      rm -f "$log"
      echo "$musl"
      return
    fi
    cat "$log" >&2
    rm -f "$log"
  fi
  host=$(rustc -vV | sed -n 's/^host: //p')
  echo "warning: no Rust standard library for $musl; building the router for $host (glibc, dynamically linked)" >&2
  echo "$host"
}
