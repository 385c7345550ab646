#!/usr/bin/env bash
# Installs skylaunch-agent on a VM and starts it as a systemd service.
#
# Required environment:
#   SKYLAUNCH_CONTROL_PLANE_URL  SKYLAUNCH_NODE_ID  SKYLAUNCH_NODE_TOKEN
# Optional:
#   SKYLAUNCH_AGENT_BINARY       prebuilt agent to install (default: `cargo install --path
#                                node-agent` from this checkout, when cargo and the source are here)
#   SKYLAUNCH_* agent settings   passed through to the service (MODEL_SERVER_URL, PROVIDER,
#                                MODEL_NAME, ENDPOINT_URL, REGION, ... see node-agent/README.md)
#   SKYLAUNCH_BOOTSTRAP_ROOT     install under this directory instead of / (for tests)
#   SKYLAUNCH_BOOTSTRAP_NO_SYSTEMCTL=1   write the files but do not call systemctl
#
# The token goes only into $ROOT/etc/skylaunch/agent.env (mode 0600); it is never printed.
set -euo pipefail

die() { echo "bootstrap-agent: $*" >&2; exit 1; }

for var in SKYLAUNCH_CONTROL_PLANE_URL SKYLAUNCH_NODE_ID SKYLAUNCH_NODE_TOKEN; do
  [ -n "${!var:-}" ] || die "$var is not set; it is required (see the node's launch job or POST /admin/nodes)"
done

# The service's environment: every SKYLAUNCH_* setting, except the bootstrap's own and the agent
# download URL (the launch template's), plus RUST_LOG. Values are single-quoted, which systemd's
# EnvironmentFile takes literally (no escapes, no whitespace trimming); checked before anything is
# written so a bad value leaves no half-installed service.
env_lines=()
for name in "${!SKYLAUNCH_@}" RUST_LOG; do
  case "$name" in
    SKYLAUNCH_BOOTSTRAP_*|SKYLAUNCH_AGENT_BINARY|SKYLAUNCH_AGENT_URL) continue ;;
  esac
  [ -n "${!name+set}" ] || continue
  case "${!name}" in
    # Names only in messages: the value may be the token.
    *"'"*|*$'\n'*) die "$name contains a quote or a newline, which the service's environment file cannot hold" ;;
  esac
  env_lines+=("$name='${!name}'")
done

root="${SKYLAUNCH_BOOTSTRAP_ROOT:-}"
here="$(cd "$(dirname "$0")/.." && pwd)"

binary="${SKYLAUNCH_AGENT_BINARY:-}"
if [ -z "$binary" ]; then
  if command -v cargo >/dev/null && [ -f "$here/node-agent/Cargo.toml" ]; then
    # Install into a scratch root so the binary lands at a known path, whatever CARGO_HOME is.
    build_root="$(mktemp -d)"
    trap 'rm -rf "$build_root"' EXIT
    echo "bootstrap-agent: building skylaunch-agent from $here/node-agent (cargo install)" >&2
    cargo install --quiet --path "$here/node-agent" --root "$build_root"
    binary="$build_root/bin/skylaunch-agent"
  else
    die "no agent binary: set SKYLAUNCH_AGENT_BINARY to a prebuilt skylaunch-agent, or run this from a checkout with cargo installed"
  fi
fi
[ -x "$binary" ] || die "SKYLAUNCH_AGENT_BINARY=$binary is not an executable file"

install -d -m 0755 "$root/usr/local/bin" "$root/etc/systemd/system"
install -d -m 0700 "$root/etc/skylaunch"
install -m 0755 "$binary" "$root/usr/local/bin/skylaunch-agent"

env_file="$root/etc/skylaunch/agent.env"
umask 077
tmp="$(mktemp "$root/etc/skylaunch/.agent.env.XXXXXX")"
printf '%s\n' "${env_lines[@]}" >"$tmp"
chmod 0600 "$tmp"
mv -f "$tmp" "$env_file"

cat >"$root/etc/systemd/system/skylaunch-agent.service" <<'UNIT'
[Unit]
Description=skylaunch node agent (registers this VM and reports its health)
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/skylaunch/agent.env
ExecStart=/usr/local/bin/skylaunch-agent
Restart=on-failure
RestartSec=5
# 3: token rejected, 4: node deleted. Restarting cannot fix either.
RestartPreventExitStatus=3 4
KillSignal=SIGTERM
TimeoutStopSec=15

[Install]
WantedBy=multi-user.target
UNIT
chmod 0644 "$root/etc/systemd/system/skylaunch-agent.service"

if [ "${SKYLAUNCH_BOOTSTRAP_NO_SYSTEMCTL:-}" = "1" ]; then
  echo "bootstrap-agent: installed under ${root:-/}; systemctl skipped" >&2
else
  systemctl daemon-reload
  systemctl enable --now skylaunch-agent
  echo "bootstrap-agent: skylaunch-agent is installed and running (journalctl -u skylaunch-agent)" >&2
fi
