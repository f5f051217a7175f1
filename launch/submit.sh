#!/usr/bin/env bash
# Submit an sd-tune search to a running Ray cluster as a Ray job, with this repository as the
# job's working directory; returns at once with the job id. See launch/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: launch/submit.sh [--space FILE] [--storage URI] [SD-TUNE LAUNCH OPTIONS...]

Submits `sd-tune launch --space FILE --storage URI [options]` to the Ray cluster at
$RAY_ADDRESS as a Ray job (`ray job submit --no-wait`), uploading this repository as the
job's working directory, and prints the job id and how to follow it. The arguments reach the
job as JSON data (SD_TUNE_JOB_ARGS in its runtime environment), never through a shell: no
value can run a command on the cluster.

  --space FILE     space file, relative to the repository root
                   (default: $SD_TUNE_SPACE, else search_spaces/imagenet.yaml)
  --storage URI    results root that every node can write: s3://BUCKET/PREFIX,
                   gs://BUCKET/PREFIX or a shared (NFS) absolute path
                   (default: $SD_TUNE_STORAGE)
  -h, --help       this text
  anything else goes to `sd-tune launch` (e.g. --name NAME, --set train.epochs=1)

environment:
  RAY_ADDRESS      the cluster's dashboard (job API), required; with the launcher
                   configs: http://127.0.0.1:8265 while `ray dashboard launch/aws-gpu.yaml`
                   forwards it
  RAY_AUTH_TOKEN   the cluster's token for token authentication, when it is not in
                   ~/.ray/auth_token (or the file named by RAY_AUTH_TOKEN_PATH); when a
                   token is there, RAY_AUTH_MODE=token is set for the ray CLI, and the token
                   file is made readable by you only (Ray writes it with mode 644)
  RAY              the ray CLI to use (default: ray on PATH, else .venv/bin/ray)

example:
  RAY_ADDRESS=http://127.0.0.1:8265 launch/submit.sh --space search_spaces/imagenet.yaml \
      --storage s3://my-bucket/sd-tune --set search.num_samples=8
EOF
}

die() {
    echo "submit.sh: error: $*" >&2
    exit 2
}

SPACE="${SD_TUNE_SPACE:-search_spaces/imagenet.yaml}"
STORAGE="${SD_TUNE_STORAGE:-}"
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --space) [ $# -ge 2 ] || die "--space needs a file"; SPACE="$2"; shift 2 ;;
        --space=*) SPACE="${1#*=}"; shift ;;
        --storage) [ $# -ge 2 ] || die "--storage needs a URI"; STORAGE="$2"; shift 2 ;;
        --storage=*) STORAGE="${1#*=}"; shift ;;
        --address|--address=*)
            die "give the cluster as RAY_ADDRESS=http://HEAD:8265, not --address (the job runs on the cluster)" ;;
        *) EXTRA+=("$1"); shift ;;
    esac
done

if [ -z "${RAY_ADDRESS:-}" ]; then
    die "RAY_ADDRESS is not set: set it to the cluster's dashboard address, e.g.
  ray dashboard launch/aws-gpu.yaml &      # forwards the head's dashboard to this machine
  RAY_ADDRESS=http://127.0.0.1:8265 launch/submit.sh --space $SPACE"
fi
[ -n "$STORAGE" ] || die "no results storage: pass --storage s3://BUCKET/PREFIX (or gs://...) or set SD_TUNE_STORAGE; every node of the cluster writes there"
case "$STORAGE" in
    s3://*|gs://*|/*) ;;
    *) die "--storage must be s3://..., gs://... or an absolute path that every node shares, not '$STORAGE'" ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f "$SPACE" ] || die "no space file '$SPACE' (paths are relative to the repository root, $PWD)"

# The job's arguments as a JSON list. `ray job submit` runs its entrypoint with `sh -c`, and
# ray CLIs differ in how they join the words after `--` (some with plain spaces), so a value
# such as `$(...)` there could run on the cluster: the entrypoint is fixed words, and the
# values travel as JSON in the runtime environment, which `sd-tune` reads (SD_TUNE_JOB_ARGS).
json_string() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}
ARGS_JSON=""
for arg in --space "$SPACE" --storage "$STORAGE" ${EXTRA[@]+"${EXTRA[@]}"}; do
    case "$arg" in
        *[[:cntrl:]]*) die "an argument holds a control character (a newline?): $(printf %q "$arg")" ;;
    esac
    ARGS_JSON="${ARGS_JSON:+$ARGS_JSON, }$(json_string "$arg")"
done

RAY_CLI="${RAY:-}"
if [ -z "$RAY_CLI" ]; then
    if command -v ray >/dev/null 2>&1; then
        RAY_CLI=ray
    elif [ -x .venv/bin/ray ]; then
        RAY_CLI=.venv/bin/ray
    else
        die "no ray CLI: install ray[default]==2.60.0 (the cluster's version) or set RAY"
    fi
fi

# Token authentication (Ray 2.60): the CLI sends the token only with RAY_AUTH_MODE=token; it
# reads RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. Ray writes
# that file with mode 644: whoever can read it can use the cluster, so it is made private.
TOKEN_FILE="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
if [ -f "$TOKEN_FILE" ] && [ -O "$TOKEN_FILE" ]; then
    chmod go-rwx "$TOKEN_FILE"
fi
if [ -z "${RAY_AUTH_MODE:-}" ] && { [ -n "${RAY_AUTH_TOKEN:-}" ] \
        || [ -n "${RAY_AUTH_TOKEN_PATH:-}" ] || [ -f "$HOME/.ray/auth_token" ]; }; then
    export RAY_AUTH_MODE=token
fi

JOB_ID="${SD_TUNE_JOB_ID:-sd-tune-$(date -u +%Y%m%d-%H%M%S)-$RANDOM}"
case "$JOB_ID" in
    *[!A-Za-z0-9_.-]*|"") die "SD_TUNE_JOB_ID may hold letters, digits, '_', '.', '-' only" ;;
esac
# RAY_JOB_STOP_WAIT_TIME_S: `ray job stop` sends SIGTERM, on which sd-tune saves the search
# and writes its report; Ray's default is to SIGKILL it 3 s later.
RUNTIME_ENV='{"excludes": [".git", ".venv", "results", "__pycache__"], "env_vars": {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": "120", "SD_TUNE_JOB_ARGS": '"$(json_string "[$ARGS_JSON]")"'}}'

"$RAY_CLI" job submit --address "$RAY_ADDRESS" --submission-id "$JOB_ID" --no-wait \
    --working-dir . --runtime-env-json "$RUNTIME_ENV" -- sd-tune launch

ENV_PREFIX="RAY_ADDRESS=$RAY_ADDRESS"
[ "${RAY_AUTH_MODE:-}" != token ] || ENV_PREFIX="$ENV_PREFIX RAY_AUTH_MODE=token"
cat <<EOF

submitted: sd-tune launch $(printf '%q ' --space "$SPACE" --storage "$STORAGE" ${EXTRA[@]+"${EXTRA[@]}"})
job id: $JOB_ID
follow:  $ENV_PREFIX $(printf %q "$RAY_CLI") job logs -f $JOB_ID
status:  $ENV_PREFIX $(printf %q "$RAY_CLI") job status $JOB_ID
stop:    $ENV_PREFIX $(printf %q "$RAY_CLI") job stop $JOB_ID
results: $STORAGE/<experiment name>   (tensorboard --logdir there)
EOF
