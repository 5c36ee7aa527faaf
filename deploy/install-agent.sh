#!/usr/bin/env bash
# Install the EdgeFleet agent on a device as a systemd service, enrolled with the control plane.
#
#   sudo deploy/install-agent.sh --cp https://cp.example.com --token efe_...
#   sudo deploy/install-agent.sh --uninstall [--purge]
#
# Idempotent: running it again upgrades the virtual environment and the unit, keeps the
# settings file and the enrollment, and restarts the service. See docs/deployment.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: install-agent.sh --cp URL --token TOKEN [options]
       install-agent.sh --uninstall [--purge] [--root DIR]

Installs the EdgeFleet agent: the system user `edgefleet`, a virtual environment in
/opt/edgefleet/venv, /etc/edgefleet/agent.toml (kept if present), the systemd units, and
the device's enrollment into /var/lib/edgefleet (skipped if already enrolled); then enables
and (re)starts edgefleet-agent.service. Running it again upgrades in place.

options:
  --cp URL            the control plane's URL (needed to enroll)
  --token TOKEN       the one-time enrollment token (or $EDGEFLEET_ENROLL_TOKEN, which
                      keeps it out of `ps`); needed to enroll
  --device-id ID      this device's id (default: the host name)
  --root-key FILE     pin this root public key (root.pub) instead of trusting the
                      control plane's on first use
  --cp-ca FILE        the CA certificate of the control plane's HTTPS, when a private CA
                      issued it (default: the system's trusted CAs)
  --source SPEC       what pip installs: a checkout, a wheel or a requirement
                      (default: the repository this script lives in)
  --extras LIST       extras to install, e.g. openvino,tflite
  --python PYTHON     the Python (3.11 or newer) that makes the venv (default: python3)
  --root DIR          install under DIR instead of / (tests, image builds): no user is
                      made, nothing is chowned, enrollment runs as the caller, and systemctl
                      commands are printed instead of run
  --uninstall         stop and disable the service, remove the units, the venv and the
                      settings; the state directory (the device identity) stays
  --purge             with --uninstall: also remove the state directory and the user
  -h, --help          this text

pip reads its usual settings (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX, ...), so a device
without Internet access can install from a local wheel directory.
EOF
}

die() {
    echo "install-agent: error: $*" >&2
    exit 1
}

say() {
    echo "install-agent: $*"
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

cp_url=""
token="${EDGEFLEET_ENROLL_TOKEN:-}"
device_id=""
root_key=""
cp_ca=""
source_spec=""
extras=""
python="python3"
root=""
action="install"
purge=0

needs_value() {
    (($# >= 2)) || die "$1 needs a value"
}

while (($#)); do
    case "$1" in
        --cp) needs_value "$@" && cp_url=$2 && shift ;;
        --token) needs_value "$@" && token=$2 && shift ;;
        --device-id) needs_value "$@" && device_id=$2 && shift ;;
        --root-key) needs_value "$@" && root_key=$2 && shift ;;
        --cp-ca) needs_value "$@" && cp_ca=$2 && shift ;;
        --source) needs_value "$@" && source_spec=$2 && shift ;;
        --extras) needs_value "$@" && extras=$2 && shift ;;
        --python) needs_value "$@" && python=$2 && shift ;;
        --root) needs_value "$@" && root=$2 && shift ;;
        --uninstall) action="uninstall" ;;
        --purge) purge=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

if [[ -n $root ]]; then
    mkdir -p "$root"
    root=$(cd "$root" && pwd)
    [[ $root != / ]] || root=""
fi
fake_root=0
[[ -z $root ]] || fake_root=1

user="edgefleet"
opt="$root/opt/edgefleet"
venv="$opt/venv"
etc="$root/etc/edgefleet"
config="$etc/agent.toml"
state="$root/var/lib/edgefleet"
units="$root/etc/systemd/system"
unit_names=(edgefleet-agent.service edgefleet-batch.service edgefleet-batch.timer)

umask 022

systemd_running() {
    ((!fake_root)) && [[ -d /run/systemd/system ]]
}

# Runs a systemctl command, or says what it would run when there is no systemd to run it.
systemctl_do() {
    if systemd_running; then
        say "systemctl $*"
        systemctl "$@"
    else
        say "systemd is not running here; would run: systemctl $*"
    fi
}

require_root() {
    if ((!fake_root)) && ((EUID != 0)); then
        die "run as root (sudo), or give --root DIR to install under a directory"
    fi
}

ensure_user() {
    if ((fake_root)); then
        say "--root: not creating the system user $user"
        return
    fi
    if id -u "$user" >/dev/null 2>&1; then
        return
    fi
    say "creating the system user $user"
    local nologin
    nologin=$(command -v nologin || echo /usr/sbin/nologin)
    useradd --system --user-group --home-dir /var/lib/edgefleet --no-create-home \
        --shell "$nologin" --comment "EdgeFleet agent" "$user"
}

# chown/chgrp that --root skips (the caller owns everything under a fake root).
owned_by() {
    local owner=$1
    shift
    if ((!fake_root)); then
        chown "$owner" "$@"
    fi
}

# The interpreter a Python runs on and its version: a venv made from another one is remade.
python_id() {
    "$1" -c 'import sys; print(sys.base_prefix, *sys.version_info[:2])' 2>/dev/null
}

ensure_venv() {
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "$python is missing or older than 3.11; give --python (Debian: apt-get install python3 python3-venv)"
    local wanted
    wanted=$(python_id "$python")
    case "$wanted" in
        /root/* | /home/* | /run/user/*)
            # ProtectHome= hides these from the service, and the service user cannot read them.
            ((fake_root)) ||
                die "$python runs from ${wanted% * *}, which the service cannot reach; give --python a system Python, e.g. /usr/bin/python3"
            ;;
        *) ;;
    esac
    if [[ -x $venv/bin/python ]] && [[ $(python_id "$venv/bin/python") == "$wanted" ]] &&
        "$venv/bin/python" -c 'import pip' 2>/dev/null; then
        say "upgrading the virtual environment $venv"
    else
        say "creating the virtual environment $venv"
        rm -rf "$venv"
        mkdir -p "$opt"
        "$python" -m venv "$venv" ||
            die "cannot create a virtual environment (Debian: apt-get install python3-venv)"
    fi
    local spec=${source_spec:-$repo}
    if [[ -n $extras ]]; then
        spec="${spec}[${extras}]"
    fi
    say "pip install $spec (the first time takes a few minutes)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$spec"
    [[ -x $venv/bin/edgefleet ]] || die "$spec did not install the edgefleet command"
    if ((!fake_root)); then
        runuser -u "$user" -- "$venv/bin/edgefleet" --help >/dev/null ||
            die "the user $user cannot run $venv/bin/edgefleet; check the permissions of $venv and of $python"
    fi
}

install_config() {
    mkdir -p "$etc"
    if [[ -e $config ]]; then
        say "keeping $config"
    else
        say "writing $config"
        install -m 0640 "$here/systemd/agent.toml.example" "$config"
    fi
    # Readable by the service (group), writable by root only.
    owned_by "root:$user" "$config"
}

install_units() {
    mkdir -p "$units"
    local name
    for name in "${unit_names[@]}"; do
        install -m 0644 "$here/systemd/$name" "$units/$name"
    done
    say "installed ${unit_names[*]} in $units"
}

enroll() {
    mkdir -p "$state"
    chmod 0700 "$state"
    owned_by "$user:$user" "$state"
    if [[ -e $state/identity.json ]]; then
        say "already enrolled ($state/identity.json); not enrolling again"
        return
    fi
    # Under --root the paths are those under DIR; otherwise $root is empty.
    local args=(agent enroll --cp "$cp_url" --state "$state")
    [[ -z $device_id ]] || args+=(--device-id "$device_id")
    if [[ -n $root_key ]]; then
        # Copied next to the settings, where the service user can read it.
        install -m 0644 "$root_key" "$etc/root.pub"
        args+=(--root-key "$etc/root.pub")
    fi
    if [[ -n $cp_ca ]]; then
        # Read by the service user while enrolling; enrolling keeps a copy in the state dir.
        install -m 0644 "$cp_ca" "$etc/cp-ca.crt"
        args+=(--cp-ca "$etc/cp-ca.crt")
    fi
    say "enrolling with $cp_url"
    # The token travels in the environment, not in the command line.
    if ((fake_root)); then
        EDGEFLEET_ENROLL_TOKEN=$token "$venv/bin/edgefleet" "${args[@]}"
    else
        EDGEFLEET_ENROLL_TOKEN=$token runuser -u "$user" -- "$venv/bin/edgefleet" "${args[@]}"
    fi
}

do_install() {
    require_root
    [[ -f $here/systemd/edgefleet-agent.service ]] ||
        die "$here/systemd/ is missing: run this script from a copy of the deploy/ directory"
    # Checked first: no point installing for minutes and then failing to enroll.
    if [[ ! -e $state/identity.json ]] && [[ -z $cp_url || -z $token ]]; then
        die "this device is not enrolled yet: give --cp URL and --token TOKEN"
    fi
    [[ -z $root_key || -f $root_key ]] || die "--root-key $root_key: no such file"
    [[ -z $cp_ca || -f $cp_ca ]] || die "--cp-ca $cp_ca: no such file"
    ensure_user
    ensure_venv
    install_config
    install_units
    enroll
    systemctl_do daemon-reload
    systemctl_do enable edgefleet-agent.service
    # restart, not start: after an upgrade the running agent must pick up the new code.
    systemctl_do restart edgefleet-agent.service ||
        die "edgefleet-agent did not start; see journalctl -u edgefleet-agent -e"
    say "done; logs: journalctl -u edgefleet-agent -f"
}

do_uninstall() {
    require_root
    if [[ -e $units/edgefleet-agent.service ]]; then
        systemctl_do disable --now edgefleet-agent.service edgefleet-batch.timer \
            edgefleet-batch.service
    fi
    local name
    for name in "${unit_names[@]}"; do
        rm -f "$units/$name"
    done
    systemctl_do daemon-reload
    say "removing $opt"
    rm -rf "$opt"
    rm -f "$config" "$etc/agent.env" "$etc/root.pub" "$etc/cp-ca.crt"
    rmdir "$etc" 2>/dev/null || true # only when nothing else (the control plane's) is left
    if ((purge)); then
        say "removing $state and $root/var/lib/edgefleet-batch"
        rm -rf "$state" "$root/var/lib/edgefleet-batch"
        if ((!fake_root)) && id -u "$user" >/dev/null 2>&1; then
            say "removing the user $user"
            userdel "$user"
        fi
    elif [[ -d $state ]]; then
        say "keeping $state (the device identity); --purge removes it"
    fi
    say "uninstalled"
}

case "$action" in
    install) do_install ;;
    uninstall) do_uninstall ;;
esac
