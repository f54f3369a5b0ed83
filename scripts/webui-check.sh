#!/usr/bin/env bash
# Proves that Open WebUI chats with a model served by `pipe serve`, in a real headless browser.
#
#   scripts/webui-check.sh [PIPELINE [NODE]...] [--screenshot PATH] [options]
#
# Builds pipe (or takes PIPE_BIN), starts `pipe serve PIPELINE [NODE]... --port 0 --json` and reads
# its `serving` event for the URL, starts Open WebUI (PyPI open-webui, pinned below, in a venv under
# target/) headless and offline against it, then runs scripts/webui_check.py: Open WebUI's own API
# (sign in, /api/models, /api/chat/completions) and a headless Chromium that picks the model, asks
# the tutorial's fortune-teller question and waits for the answer. Saves a screenshot; exits non-zero
# with a message when no answer comes. Every child it started is stopped on exit.
#
# Options:
#   --screenshot PATH   where the PNG goes (default docs/webui-fortune.png)
#   --url URL           use an already running `pipe serve` at URL (http://127.0.0.1:PORT) instead
#                       of starting one; it speaks both APIs, --via picks the connection
#   --via ollama|openai|both
#                       which of Open WebUI's connections points at pipe serve (default ollama: the
#                       tutorial's OLLAMA_BASE_URL path)
#   --ollama-url URL    any other Ollama-API server (no pipe is started)
#   --openai-url URL    any other OpenAI-API server, with its /v1 (e.g. llama-server's
#                       http://127.0.0.1:8081/v1; no pipe is started). May go with --ollama-url.
#   --model ID          the model to chat with (default: the first of pipe's `serving` event, else
#                       the first Open WebUI lists)
#   --timeout SECONDS   wait for each answer (default 300)
#   --keep              keep the temporary folder (logs, Open WebUI's DATA_DIR)
# Environment: PIPE_BIN (skip the cargo build), PIPE_SERVE_TIMEOUT (seconds to wait for the
# `serving` event, default 3600: the first serve of a pipeline runs it), WEBUI_VENV (default
# target/webui-venv), and whatever `pipe serve` needs (PIPE_LLAMA_CPP, PIP_FIND_LINKS, ...).
#
# Takes (2 cores): the venv install once, about 6 minutes and 7 GB (open-webui pulls torch and
# CUDA wheels); then about a minute: Open WebUI starts in 15-25 s, the two checks take 30-70 s
# (plus, on a pipeline's first serve, the pipeline run: fortune.yaml about 6 minutes).
set -euo pipefail

WEBUI_VERSION=0.12.4
QUESTION='现在你要扮演我碰到一位神秘的算命大师, 你是谁?今天我的事业运道如何?'
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "webui-check: $*" >&2; exit 1; }
say() { echo "webui-check: $*" >&2; }
usage() { sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

PIPELINE='' NODES=() SCREENSHOT=docs/webui-fortune.png URL='' VIA=ollama OLLAMA_URL='' OPENAI_URL=''
MODEL='' TIMEOUT=300 KEEP=''
while [ $# -gt 0 ]; do
  case "$1" in
    --screenshot) SCREENSHOT=${2:?--screenshot needs a path}; shift 2 ;;
    --url) URL=${2:?--url needs a URL}; shift 2 ;;
    --via) VIA=${2:?--via needs ollama, openai or both}; shift 2 ;;
    --ollama-url) OLLAMA_URL=${2:?--ollama-url needs a URL}; shift 2 ;;
    --openai-url) OPENAI_URL=${2:?--openai-url needs a URL}; shift 2 ;;
    --model) MODEL=${2:?--model needs an id}; shift 2 ;;
    --timeout) TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage 0 ;;
    -*) echo "webui-check: unknown option $1" >&2; usage 2 >&2 ;;
    *) if [ -z "$PIPELINE" ]; then PIPELINE=$1; else NODES+=("$1"); fi; shift ;;
  esac
done
case "$VIA" in ollama|openai|both) ;; *) die "--via takes ollama, openai or both, not $VIA" ;; esac
PIPELINE=${PIPELINE:-pipelines/fortune.yaml}
START_PIPE=1
if [ -n "$URL$OLLAMA_URL$OPENAI_URL" ]; then START_PIPE=; fi
T_START=$SECONDS

# --- temporary folder and cleanup ------------------------------------------------------------
WORK=$(mktemp -d -t webui-check.XXXXXX)
PIDS=()
cleanup() {
  local rc=$? pid
  # Each child was started with setsid, so its pid is its process group: stopping the group
  # also stops what it started (pipe's llama-server children, uvicorn workers).
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  if [ -n "$KEEP" ] || [ "$rc" -ne 0 ]; then say "logs kept in $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Start "$@" in its own session (so its own process group), output to $WORK/NAME.out and .err;
# its pid lands in LAST_PID and in PIDS for the cleanup.
spawn() {
  local name=$1; shift
  : >"$WORK/$name.out"; : >"$WORK/$name.err"  # there before anyone tails them
  setsid "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  PIDS+=("$!")
  LAST_PID=$!
}

# --- the Open WebUI venv (reused: the install is the slow part) ------------------------------
VENV=${WEBUI_VENV:-$ROOT/target/webui-venv}
if [ ! -f "$VENV/.installed-open-webui-$WEBUI_VERSION" ]; then
  say "installing open-webui==$WEBUI_VERSION and selenium into $VENV (once; ~6 min, ~7 GB)"
  t=$SECONDS
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  nice -n 10 "$VENV/bin/pip" install -q --disable-pip-version-check "open-webui==$WEBUI_VERSION" selenium
  touch "$VENV/.installed-open-webui-$WEBUI_VERSION"
  say "venv ready in $((SECONDS - t)) s"
fi

# --- headless Chromium (Debian's, with its driver: nothing downloads a browser) ---------------
need_pkgs=()
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v chromedriver >/dev/null || need_pkgs+=(chromium-driver)
# Without a CJK font the screenshot shows the question and answer as empty boxes.
if ! command -v fc-list >/dev/null || [ -z "$(fc-list :lang=zh 2>/dev/null)" ]; then need_pkgs+=(fonts-noto-cjk); fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then die "install ${need_pkgs[*]} (Debian packages) first"; fi
  say "installing ${need_pkgs[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive nice apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# --- pipe serve --------------------------------------------------------------------------------
if [ -n "$START_PIPE" ]; then
  [ -f "$PIPELINE" ] || die "no pipeline file $PIPELINE"
  if [ -z "${PIPE_BIN:-}" ]; then
    say "building pipe (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet)
    PIPE_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pipe
  fi
  [ -x "$PIPE_BIN" ] || die "PIPE_BIN $PIPE_BIN is not an executable"
  say "starting $PIPE_BIN serve $PIPELINE ${NODES[*]} --port 0 --json"
  t=$SECONDS
  spawn pipe "$PIPE_BIN" serve "$PIPELINE" "${NODES[@]}" --port 0 --json
  PIPE_PID=$LAST_PID
  # Its stderr (the pipeline's progress, when serve has to run it first) goes on to ours.
  tail -n +1 -f --pid="$PIPE_PID" "$WORK/pipe.err" >&2 &
  PIDS+=("$!")
  serving=
  for _ in $(seq "${PIPE_SERVE_TIMEOUT:-3600}"); do
    serving=$(grep -m1 '"event" *: *"serving"' "$WORK/pipe.out" || true)
    [ -n "$serving" ] && break
    kill -0 "$PIPE_PID" 2>/dev/null || die "pipe serve exited before serving (stdout: $(tail -c 2000 "$WORK/pipe.out"))"
    sleep 1
  done
  [ -n "$serving" ] || die "no serving event from pipe serve within ${PIPE_SERVE_TIMEOUT:-3600} s"
  URL=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["url"])' "$serving")
  if [ -z "$MODEL" ]; then
    MODEL=$(python3 -c 'import json,sys; m=json.loads(sys.argv[1]).get("models") or [""]; m=m[0]; print(m.get("name") or m.get("id") or "" if isinstance(m, dict) else m)' "$serving")
  fi
  say "pipe serve is serving $URL (models: $(python3 -c 'import json,sys; print(", ".join(m["name"] if isinstance(m, dict) else m for m in json.loads(sys.argv[1]).get("models") or []))' "$serving")) after $((SECONDS - t)) s"
fi
if [ -n "$URL" ]; then
  URL=${URL%/}
  case "$VIA" in
    ollama) OLLAMA_URL=$URL ;;
    openai) OPENAI_URL=$URL/v1 ;;
    both) OLLAMA_URL=$URL OPENAI_URL=$URL/v1 ;;
  esac
fi

# --- Open WebUI, headless and offline ---------------------------------------------------------
# Names checked against open-webui 0.12.4's env.py and config.py:
#  OFFLINE_MODE=true   sets HF_HUB_OFFLINE=1 itself and turns off the version check and the
#                      embedding/reranking models' auto-update (HF_HUB_OFFLINE is set here too)
#  RAG_EMBEDDING_ENGINE=openai
#                      empty (the default) loads sentence-transformers/all-MiniLM-L6-v2 from the HF
#                      hub at start; any engine name skips that (nothing is embedded in this check)
#  WEBUI_AUTH=False    single-user mode: /api/v1/auths/signin then signs in admin@localhost
#  WEBUI_SECRET_KEY    else `open-webui serve` writes .webui_secret_key into the current folder
#  ENABLE_OLLAMA_API + OLLAMA_BASE_URL, ENABLE_OPENAI_API + OPENAI_API_BASE_URL
#                      the connections; an enabled OpenAI connection without a URL would list
#                      models from api.openai.com, and an empty OLLAMA_BASE_URL probes :11434
#  ENABLE_{TITLE,TAGS,FOLLOW_UP}_GENERATION=false
#                      otherwise each chat fires three more generations at the same small model,
#                      which on 2 cores slows the answer being checked
#  ANONYMIZED_TELEMETRY, DO_NOT_TRACK, SCARF_NO_ANALYTICS: no analytics pings (chromadb etc.)
WEBUI_PORT=$(free_port)
WEBUI=http://127.0.0.1:$WEBUI_PORT
webui_env=(
  DATA_DIR="$WORK/webui-data"
  WEBUI_AUTH=False
  WEBUI_SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
  OFFLINE_MODE=true
  HF_HUB_OFFLINE=1
  RAG_EMBEDDING_ENGINE=openai
  ENABLE_VERSION_UPDATE_CHECK=false
  ENABLE_TITLE_GENERATION=false
  ENABLE_TAGS_GENERATION=false
  ENABLE_FOLLOW_UP_GENERATION=false
  ANONYMIZED_TELEMETRY=false
  DO_NOT_TRACK=true
  SCARF_NO_ANALYTICS=true
)
if [ -n "$OLLAMA_URL" ]; then
  webui_env+=(ENABLE_OLLAMA_API=true OLLAMA_BASE_URL="$OLLAMA_URL")
else
  # Set even when off: an empty OLLAMA_BASE_URL makes 0.12.4 probe :11434 and :12434 at import,
  # and would find a `pipe serve` left on its default port.
  webui_env+=(ENABLE_OLLAMA_API=false OLLAMA_BASE_URL=http://127.0.0.1:9)
fi
if [ -n "$OPENAI_URL" ]; then
  webui_env+=(ENABLE_OPENAI_API=true OPENAI_API_BASE_URL="$OPENAI_URL" OPENAI_API_KEY=none)
else
  webui_env+=(ENABLE_OPENAI_API=false)
fi
say "starting Open WebUI $WEBUI_VERSION at $WEBUI (ollama: ${OLLAMA_URL:-off}, openai: ${OPENAI_URL:-off})"
t=$SECONDS
mkdir -p "$WORK/webui-data"
# Its cwd is the temp folder: whatever it writes beside itself stays out of the repository.
spawn webui env -C "$WORK" "${webui_env[@]}" "$VENV/bin/open-webui" serve --host 127.0.0.1 --port "$WEBUI_PORT"
WEBUI_PID=$LAST_PID
for _ in $(seq 300); do
  curl -sf "$WEBUI/health" >/dev/null 2>&1 && break
  kill -0 "$WEBUI_PID" 2>/dev/null || die "Open WebUI exited at start: $(tail -n 30 "$WORK/webui.err")"
  sleep 1
done
curl -sf "$WEBUI/health" >/dev/null || die "Open WebUI not healthy after 300 s: $(tail -n 30 "$WORK/webui.err")"
say "Open WebUI up in $((SECONDS - t)) s"

# --- the checks ---------------------------------------------------------------------------------
t=$SECONDS
args=(--webui "$WEBUI" --question "$QUESTION" --screenshot "$SCREENSHOT" --timeout "$TIMEOUT")
[ -n "$MODEL" ] && args+=(--model "$MODEL")
if ! "$VENV/bin/python" "$ROOT/scripts/webui_check.py" "${args[@]}"; then
  say "Open WebUI log tail:"; tail -n 20 "$WORK/webui.err" >&2
  die "FAILED (screenshot, if any: $SCREENSHOT)"
fi
say "checks passed in $((SECONDS - t)) s; screenshot $SCREENSHOT; total $((SECONDS - T_START)) s"
