#!/usr/bin/env bash
# Launcher check: bring up cluster.local.yaml for real on this machine and run the smoke search on it.
#
#   sudo scripts/launcher_check.sh            # as root: installs openssh-server + rsync, adds a user
#
# 1. openssh-server (apt) with an sshd of our own bound to 127.0.0.1:22, a key for root
#    (~/.ssh/distillray_launcher) in the authorized_keys of a dedicated user ($LAUNCH_USER,
#    default "raylaunch"). Not root: `ray down` and the `ray stop` in the start commands stop every
#    Ray process of the SSH user on the machine, and other people's Ray may run here as root.
# 2. A copy of cluster.local.yaml with this check's user, key, free ports for the GCS and the
#    dashboard, and setup_commands that make ~/distillray-venv from the system python3 sharing
#    $VENV's packages (no network installs) and a Ray token of this check's own ($WORK/auth_token,
#    shipped as cluster.local.yaml ships ~/.ray/auth_token); everything else (file_mounts, PATH
#    and RAY_AUTH_MODE=token in ~/.bashrc, start commands, dashboard on 127.0.0.1) as
#    cluster.local.yaml has it.
# 3. ray up -y; ray submit tune_mkd.py -- --preset smoke (MLflow in a sqlite store under $WORK,
#    work root from DISTILLRAY_WORK_ROOT in the user's ~/.bashrc); the dashboard answers on
#    127.0.0.1 only, also through `ray dashboard`; a client without the token is refused (the
#    GCS and the dashboard's API); `ray job submit` with the token joins the cluster; the runs
#    are in MLflow (one child run per trial, none RUNNING); ray down -y; no Ray process is left.
# The summary at the end lists each step with PASS/FAIL and its time. Exit status 0 when all pass.
#
# Environment: VENV (default <repo>/.venv), LAUNCH_USER, WORK (default /tmp/distillray-launcher-check),
# NUM_SAMPLES (default 2), KEEP_SSHD=1 to leave sshd running.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$REPO/.venv}
LAUNCH_USER=${LAUNCH_USER:-raylaunch}
WORK=${WORK:-/tmp/distillray-launcher-check}
NUM_SAMPLES=${NUM_SAMPLES:-2}
KEY=$HOME/.ssh/distillray_launcher
CFG=$WORK/cluster.check.yaml
UWORK=$WORK/user                     # written by the cluster's user: MLflow store, work root
RAYTMP=/tmp/rlc-$LAUNCH_USER         # the user's Ray temp dir (short: Ray's socket paths live there)
NAME=launcher-check-$(date +%s)
RAY=$VENV/bin/ray
PY=$VENV/bin/python
SSHD_PID=""
CLUSTER_UP=0
SUMMARY=()
FAILED=0

log() { printf '\n=== %s\n' "$*"; }
step() {  # step NAME CMD...: run, time, record PASS/FAIL
    local name=$1; shift
    local t0=$SECONDS
    log "$name"
    if "$@"; then
        SUMMARY+=("PASS  $(printf '%4ss' $((SECONDS - t0)))  $name")
    else
        SUMMARY+=("FAIL  $(printf '%4ss' $((SECONDS - t0)))  $name")
        FAILED=1
        return 1
    fi
}
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cleanup() {
    if [ "$CLUSTER_UP" = 1 ]; then
        step "ray down -y (cleanup after a failure)" "$RAY" down -y "$CFG" >/dev/null 2>&1 || true
    fi
    if [ -n "$SSHD_PID" ] && [ "${KEEP_SSHD:-0}" != 1 ]; then
        kill "$SSHD_PID" 2>/dev/null || true
    fi
    printf '\n==================== launcher check summary ====================\n'
    printf '%s\n' "${SUMMARY[@]}"
    [ -n "${SUMMARY_NOTES:-}" ] && printf '%s\n' "$SUMMARY_NOTES"
    printf 'logs: %s\n' "$WORK"
    [ "$FAILED" = 0 ] && echo "RESULT: all steps passed" || echo "RESULT: some steps FAILED"
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then echo "run as root (apt-get, useradd, sshd)" >&2; exit 2; fi
if [ "$LAUNCH_USER" = root ] && [ "${ALLOW_ROOT:-0}" != 1 ]; then
    echo "LAUNCH_USER=root: ray down would stop every root Ray process here; set ALLOW_ROOT=1" >&2
    exit 2
fi
[ -x "$RAY" ] || { echo "no $RAY: set VENV" >&2; exit 2; }
mkdir -p "$WORK"

install_packages() {
    if command -v /usr/sbin/sshd >/dev/null && command -v rsync >/dev/null; then
        echo "openssh-server and rsync already installed"; return 0
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server rsync >"$WORK/apt.log" 2>&1 &&
        echo "installed: $(dpkg-query -W -f='${Package} ${Version}, ' openssh-server rsync)"
}

setup_user_and_key() {
    id "$LAUNCH_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$LAUNCH_USER" || return 1
    usermod -p '*' "$LAUNCH_USER"   # no password, but not "locked" (sshd refuses locked accounts)
    local home; home=$(getent passwd "$LAUNCH_USER" | cut -d: -f6)
    mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh"
    [ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N "" -C distillray-launcher -f "$KEY" || return 1
    install -d -m 700 -o "$LAUNCH_USER" -g "$LAUNCH_USER" "$home/.ssh"
    touch "$home/.ssh/authorized_keys"
    grep -qF "$(cut -d' ' -f2 "$KEY.pub")" "$home/.ssh/authorized_keys" || cat "$KEY.pub" >>"$home/.ssh/authorized_keys"
    chown "$LAUNCH_USER:$LAUNCH_USER" "$home/.ssh/authorized_keys" && chmod 600 "$home/.ssh/authorized_keys"
    # the cluster's user writes here; Ray's temp dir of its own keeps its address file
    # (ray_current_cluster) away from other users of /tmp/ray
    mkdir -p "$UWORK" && chown "$LAUNCH_USER:$LAUNCH_USER" "$UWORK" && chmod 755 "$WORK"
    echo "user $LAUNCH_USER (home $home), key $KEY"
}

start_sshd() {
    mkdir -p /run/sshd && ssh-keygen -A >/dev/null || return 1
    if ss -ltn 2>/dev/null | grep -q '127.0.0.1:22 '; then
        echo "something already listens on 127.0.0.1:22: using it"; return 0
    fi
    cat >"$WORK/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port 22
PidFile $WORK/sshd.pid
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
UsePAM no
AllowUsers $LAUNCH_USER
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
    /usr/sbin/sshd -f "$WORK/sshd_config" -E "$WORK/sshd.log" || return 1
    for _ in $(seq 20); do [ -s "$WORK/sshd.pid" ] && break; sleep 0.2; done
    SSHD_PID=$(cat "$WORK/sshd.pid")
    ssh -i "$KEY" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
        "$LAUNCH_USER@127.0.0.1" 'echo "ssh ok as $(whoami)"' 2>/dev/null
}

# The cluster user's ~/distillray-venv: the system python3 (same minor version as $VENV) with
# $VENV's site-packages added, and a `ray` command. (Not a link to $VENV: its interpreter may live
# where that user cannot reach, e.g. under /root.)
shared_venv_commands() {
    local site minor sysminor
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    minor=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    sysminor=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
    if [ "$minor" != "$sysminor" ]; then
        echo "the system python3 is $sysminor, $VENV is $minor: cannot share its packages" >&2
        return 1
    fi
    SETUP_JSON=$("$PY" - "$site" "$minor" <<'PYEOF'
import json, sys
site, minor = sys.argv[1:]
v = "~/distillray-venv"
print(json.dumps([
    f"test -x {v}/bin/python || /usr/bin/python3 -m venv --without-pip {v}",
    f"echo 'import site; site.addsitedir(\"{site}\")' > {v}/lib/python{minor}/site-packages/distillray-shared.pth",
    f"printf '#!%s\\nimport sys\\nfrom ray.scripts.scripts import main\\nsys.exit(main())\\n' "
    f"$HOME/distillray-venv/bin/python > {v}/bin/ray && chmod +x {v}/bin/ray",
]))
PYEOF
)
}

write_config() {
    shared_venv_commands || return 1
    # the cluster's Ray token (cluster.local.yaml ships the launching user's ~/.ray/auth_token;
    # this check makes its own, so root's is neither used nor created)
    ( umask 077; "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$WORK/auth_token" )
    TOKEN_FILE=$WORK/auth_token
    # free ports: other Ray instances on this machine may hold 6379, 8265 and the dashboard
    # agent's 52365 (the agent then fails to start, and `ray job submit` finds "no agent")
    GCS_PORT=$(free_port); DASH_PORT=$(free_port); AGENT_PORT=$(free_port)
    "$PY" - "$REPO/cluster.local.yaml" "$CFG" <<EOF
import sys, yaml
src, dst = sys.argv[1:]
c = yaml.safe_load(open(src))
c["cluster_name"] = "distillray-launcher-check"
c["auth"] = {"ssh_user": "$LAUNCH_USER", "ssh_private_key": "$KEY"}
assert c["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
c["file_mounts"] = {"~/distillray": "$REPO", "~/.ray/auth_token": "$WORK/auth_token"}
path_line = next(s for s in c["setup_commands"] if "# distillray-venv" in s)
auth_line = next(s for s in c["setup_commands"] if "# distillray-ray-auth" in s)
env = "export RAY_TMPDIR=$RAYTMP DISTILLRAY_WORK_ROOT=$UWORK/work  # distillray-check"
c["setup_commands"] = [  # instead of venv + pip installs (no network): shared_venv_commands
    *$SETUP_JSON,
    path_line,
    auth_line,
    f"grep -q '# distillray-check' ~/.bashrc || sed -i '1i {env}' ~/.bashrc",
    "mkdir -p $RAYTMP $UWORK/work $UWORK/mlflow",
    "python -c 'import orchestrator, ray; print(\"package ok, ray\", ray.__version__)'",
]
def ports(cmds):
    return [s.replace("--port=6379", "--port=$GCS_PORT").replace("--dashboard-port=8265",
            "--dashboard-port=$DASH_PORT --dashboard-agent-listen-port=$AGENT_PORT")
            .replace("\$RAY_HEAD_IP:6379", "\$RAY_HEAD_IP:$GCS_PORT") for s in cmds]
c["head_start_ray_commands"] = ports(c["head_start_ray_commands"])
c["worker_start_ray_commands"] = ports(c["worker_start_ray_commands"])
yaml.safe_dump(c, open(dst, "w"), sort_keys=False, width=1000)
EOF
    echo "config $CFG (GCS port $GCS_PORT, dashboard port $DASH_PORT, agent port $AGENT_PORT)"
}

ray_up() {
    CLUSTER_UP=1
    "$RAY" up -y --no-config-cache "$CFG" >"$WORK/ray_up.log" 2>&1
    local rc=$?
    tail -n 12 "$WORK/ray_up.log"
    return $rc
}

ray_submit() {
    "$RAY" submit "$CFG" "$REPO/tune_mkd.py" -- --preset smoke --name "$NAME" \
        --num-samples "$NUM_SAMPLES" --tracking-uri "sqlite:///$UWORK/mlflow/mlflow.db" \
        >"$WORK/submit.log" 2>&1
    local rc=$?
    grep -E '^\[(ray|mlflow|teacher|bundle|best|done)\]|joined the cluster|dashboard' "$WORK/submit.log" | head -20
    return $rc
}

dashboard_loopback() {
    local code; code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$DASH_PORT/")
    echo "dashboard http://127.0.0.1:$DASH_PORT/ -> HTTP $code"
    local listen; listen=$(ss -ltn | awk -v p=":$DASH_PORT" '$4 ~ p"$" {print $4}' | sort -u | tr '\n' ' ')
    echo "listening on: $listen"
    [ "$code" = 200 ] && [ "$listen" = "127.0.0.1:$DASH_PORT " ]
}

dashboard_tunnel() {
    local lport; lport=$(free_port)
    # its own process group, so the SSH tunnel it starts ends with it (kill by that group id)
    setsid "$RAY" dashboard "$CFG" --port "$lport" --remote-port "$DASH_PORT" >"$WORK/ray_dashboard.log" 2>&1 &
    local pid=$! code=000
    for _ in $(seq 30); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$lport/") && [ "$code" = 200 ] && break
        sleep 1
    done
    kill -- -"$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    echo "ray dashboard tunnel http://127.0.0.1:$lport/ -> HTTP $code"
    [ "$code" = 200 ]
}

token_refused() {
    # the dashboard's API without the token, then with it
    local without with
    without=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$DASH_PORT/api/jobs/")
    with=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$TOKEN_FILE")" \
        "http://127.0.0.1:$DASH_PORT/api/jobs/")
    echo "dashboard /api/jobs/: without the token HTTP $without, with it HTTP $with"
    # a driver without a token, and one with another token, against the GCS
    local out1 out2
    out1=$(RAY_AUTH_MODE=disabled timeout 120 "$PY" -c \
        "import ray; ray.init(address='127.0.0.1:$GCS_PORT', log_to_driver=False); print('JOINED')" 2>&1)
    out2=$(RAY_AUTH_MODE=token RAY_AUTH_TOKEN=not-the-token timeout 120 "$PY" -c \
        "import ray; ray.init(address='127.0.0.1:$GCS_PORT', log_to_driver=False); print('JOINED')" 2>&1)
    echo "driver without a token: $(grep -o 'Authentication token is missing or incorrect' <<<"$out1" | head -1 || echo "$out1" | tail -1)"
    echo "driver with another token: $(grep -o 'Authentication token is missing or incorrect' <<<"$out2" | head -1 || echo "$out2" | tail -1)"
    [ "$without" = 401 ] && [ "$with" = 200 ] && ! grep -q JOINED <<<"$out1$out2" \
        && grep -q 'Authentication token is missing or incorrect' <<<"$out1" \
        && grep -q 'Authentication token is missing or incorrect' <<<"$out2"
}

job_submit() {
    local upy; upy=$(getent passwd "$LAUNCH_USER" | cut -d: -f6)/distillray-venv/bin/python
    RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$TOKEN_FILE \
    RAY_ADDRESS="http://127.0.0.1:$DASH_PORT" "$RAY" job submit -- "$upy" -c \
        "from orchestrator.runtime.ray_runtime import init_ray; r = init_ray(); print('job sees CPU', r.get('CPU'))" \
        >"$WORK/job_submit.log" 2>&1
    local rc=$?
    grep -E "joined the cluster|job sees|succeeded|failed" "$WORK/job_submit.log" | head -5
    [ $rc = 0 ] && grep -q "joined the cluster" "$WORK/job_submit.log"
}

mlflow_record() {
    "$PY" - "$UWORK/mlflow/mlflow.db" "$NAME" "$NUM_SAMPLES" <<'EOF'
import sys
from mlflow.tracking import MlflowClient
db, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = MlflowClient(f"sqlite:///{db}")
exp = c.get_experiment_by_name("distillray")
runs = c.search_runs([exp.experiment_id], max_results=1000)
parent = [r for r in runs if r.data.tags.get("distillray.kind") == "search"
          and r.data.tags.get("distillray.search") == name]
kids = [r for r in runs if r.data.tags.get("distillray.kind") == "trial"
        and r.data.tags.get("distillray.search") == name]
teachers = [r for r in runs if r.data.tags.get("distillray.kind") == "teacher"]
print(f"MLflow {db}: parent {[p.info.status for p in parent]}, {len(kids)} child runs "
      f"{sorted(k.info.status for k in kids)}, {len(teachers)} teacher run(s); best dev_score "
      f"{max((k.data.metrics.get('dev_score', float('nan')) for k in kids), default=None)}")
ok = (len(parent) == 1 and parent[0].info.status == "FINISHED" and len(kids) == n
      and not any(k.info.status in ("RUNNING", "SCHEDULED") for k in kids))
sys.exit(0 if ok else 1)
EOF
}

ray_down() {
    "$RAY" down -y "$CFG" >"$WORK/ray_down.log" 2>&1 || return 1
    CLUSTER_UP=0
    sleep 2
    local left; left=$(pgrep -u "$LAUNCH_USER" -f 'raylet|gcs_server|dashboard' | wc -l)
    echo "Ray processes of $LAUNCH_USER left: $left"
    [ "$left" = 0 ]
}

step "apt-get install openssh-server rsync" install_packages || exit 1
step "user $LAUNCH_USER + root key in its authorized_keys" setup_user_and_key || exit 1
step "sshd bound to 127.0.0.1:22, ssh as $LAUNCH_USER" start_sshd || exit 1
step "config from cluster.local.yaml" write_config || exit 1
step "ray up -y (cluster.local.yaml, head 127.0.0.1)" ray_up || exit 1
step "ray submit tune_mkd.py -- --preset smoke --num-samples $NUM_SAMPLES" ray_submit
step "dashboard answers on 127.0.0.1 only" dashboard_loopback
step "ray dashboard (SSH tunnel) answers" dashboard_tunnel
step "a client without the token is refused (GCS, dashboard API)" token_refused
step "ray job submit (with the token) joins the cluster" job_submit
step "runs landed in MLflow (sqlite)" mlflow_record
step "ray down -y, no Ray process left" ray_down
exit $FAILED
