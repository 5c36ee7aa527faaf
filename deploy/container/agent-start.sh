#!/bin/sh
# The agent container's start: enroll this device on its first start, then run the agent.
#
# Enrollment runs only while the state directory holds no identity (identity.json), so a
# restarted container goes straight to `edgefleet agent run`. The environment it reads:
#   EDGEFLEET_AGENT_STATE_DIR    the state directory (the image sets /var/lib/edgefleet)
#   EDGEFLEET_AGENT_DEVICE_ID    this device's id (default: the host name); `agent run` reads
#                                it too, and it must match the enrolled certificate
#   EDGEFLEET_ENROLL_URL         the control plane's URL (needed only to enroll)
#   EDGEFLEET_ENROLL_TOKEN       the one-time enrollment token, or
#   EDGEFLEET_ENROLL_TOKEN_FILE  a file holding it (a Kubernetes or Docker secret)
#   EDGEFLEET_ENROLL_ROOT_KEY    optional: the root.pub to pin instead of trusting the control
#                                plane's on first use
#   EDGEFLEET_ENROLL_CP_CA       optional: the CA certificate of the control plane's HTTPS, when
#                                a private CA issued it (kept in the state directory)
#   EDGEFLEET_AGENT_ALLOW_PLAIN_TRANSPORT  `agent enroll` and `agent run` read it: true lets
#                                them use http:// and mqtt:// beyond loopback (a trusted network)
# Arguments are handed to `edgefleet agent run`.
set -eu

state_dir="${EDGEFLEET_AGENT_STATE_DIR:-/var/lib/edgefleet}"
EX_CONFIG=78 # sysexits.h: a setting is missing; restarting will not help until it is given

fail() {
    echo "edgefleet-agent-start: $*" >&2
    exit "$EX_CONFIG"
}

# Positional parameters are the function's own here, so `set --` builds its command line
# without touching the arguments meant for `agent run`.
enroll() {
    set -- agent enroll --cp "$EDGEFLEET_ENROLL_URL" --state "$state_dir"
    if [ -n "${EDGEFLEET_AGENT_DEVICE_ID:-}" ]; then
        set -- "$@" --device-id "$EDGEFLEET_AGENT_DEVICE_ID"
    fi
    if [ -n "${EDGEFLEET_ENROLL_ROOT_KEY:-}" ]; then
        set -- "$@" --root-key "$EDGEFLEET_ENROLL_ROOT_KEY"
    fi
    if [ -n "${EDGEFLEET_ENROLL_CP_CA:-}" ]; then
        set -- "$@" --cp-ca "$EDGEFLEET_ENROLL_CP_CA"
    fi
    # The token travels in the environment, never on the command line (`ps` shows that).
    EDGEFLEET_ENROLL_TOKEN="$token" edgefleet "$@"
}

if [ ! -f "$state_dir/identity.json" ]; then
    token="${EDGEFLEET_ENROLL_TOKEN:-}"
    token_file="${EDGEFLEET_ENROLL_TOKEN_FILE:-}"
    if [ -z "$token" ] && [ -n "$token_file" ] && [ -r "$token_file" ]; then
        token="$(tr -d '[:space:]' <"$token_file")"
    fi
    [ -n "$token" ] || fail "$state_dir holds no identity: give a one-time enrollment token" \
        "in EDGEFLEET_ENROLL_TOKEN or a file named by EDGEFLEET_ENROLL_TOKEN_FILE"
    [ -n "${EDGEFLEET_ENROLL_URL:-}" ] || fail "$state_dir holds no identity: set" \
        "EDGEFLEET_ENROLL_URL to the control plane's URL to enroll"
    echo "edgefleet-agent-start: enrolling with $EDGEFLEET_ENROLL_URL" >&2
    enroll
fi

# A spent token is of no use to the running agent; keep it out of its environment.
unset EDGEFLEET_ENROLL_TOKEN
exec edgefleet agent run "$@"
