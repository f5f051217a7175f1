#!/usr/bin/env bash
# Submit an sd-tune search to a running Ray cluster as a Ray job, with this repository as the
# job's working directory; returns at once with the job id. See launch/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: launch/submit.sh [--space FILE] [--storage URI] [SD-TUNE LAUNCH OPTIONS...]

Submits `sd-tune launch --space FILE --storage URI [options]` to the Ray cluster at
$RAY_ADDRESS as a Ray job (`ray job submit --no-wait`), uploading this repository as the
job's working directory, and prints the job id and how to follow it.

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
                   token is there, RAY_AUTH_MODE=token is set for the ray CLI
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
# reads RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.
if [ -z "${RAY_AUTH_MODE:-}" ] && { [ -n "${RAY_AUTH_TOKEN:-}" ] \
        || [ -n "${RAY_AUTH_TOKEN_PATH:-}" ] || [ -f "$HOME/.ray/auth_token" ]; }; then
    export RAY_AUTH_MODE=token
fi

JOB_ID="${SD_TUNE_JOB_ID:-sd-tune-$(date -u +%Y%m%d-%H%M%S)-$RANDOM}"
RUNTIME_ENV='{"excludes": [".git", ".venv", "results", "__pycache__"], "env_vars": {"PYTHONUNBUFFERED": "1"}}'

"$RAY_CLI" job submit --address "$RAY_ADDRESS" --submission-id "$JOB_ID" --no-wait \
    --working-dir . --runtime-env-json "$RUNTIME_ENV" \
    -- sd-tune launch --space "$SPACE" --storage "$STORAGE" ${EXTRA[@]+"${EXTRA[@]}"}

ENV_PREFIX="RAY_ADDRESS=$RAY_ADDRESS"
[ "${RAY_AUTH_MODE:-}" != token ] || ENV_PREFIX="$ENV_PREFIX RAY_AUTH_MODE=token"
cat <<EOF

job id: $JOB_ID
follow:  $ENV_PREFIX $RAY_CLI job logs -f $JOB_ID
status:  $ENV_PREFIX $RAY_CLI job status $JOB_ID
stop:    $ENV_PREFIX $RAY_CLI job stop $JOB_ID
results: $STORAGE/<experiment name>   (tensorboard --logdir there)
EOF
