#!/usr/bin/env bash
# The remote cache benchmark (BENCHMARKS.md, "Remote cache"): a real S3 server (s3s-fs, a folder
# served over the S3 API) on loopback, and on it
#   1. pipe's push/pull of one 1 GiB object (benches/remote.rs),
#   2. `dvc push` / `dvc pull` of the same bytes to the same server,
#   3. boto3's transfer manager (64 MiB parts, 4 threads) up and down,
#   4. pipelines/fortune.yaml at the CI budget: run in one checkout, then pulled by an empty one.
# Installs what it needs under target/bench-tools (s3s-fs: about 3 minutes of compiling on 2
# cores; dvc and boto3 into a venv). Usage: scripts/bench-remote.sh [MiB]
# (SECTIONS="1 5" runs only those sections; default all.)
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-1024}
SECTIONS=${SECTIONS:-1 2 3 4 5}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
T="$PWD/target/bench-tools"
mkdir -p "$T"
[ -x "$T/bin/s3s-fs" ] || cargo install -q s3s-fs@0.14.1 --features binary --root "$T"
if [ ! -x "$T/venv/bin/dvc" ]; then
  python3 -m venv "$T/venv"
  "$T/venv/bin/pip" install -q --disable-pip-version-check "dvc[s3]" boto3
fi
W=$(mktemp -d "$PWD/target/bench-remote-XXXX")
trap 'kill "$server" 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/s3/bench"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$T/bin/s3s-fs" --host 127.0.0.1 --port "$PORT" --access-key bench --secret-key benchsecret "$W/s3" > "$W/s3s.log" 2>&1 &
server=$!
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
echo "## machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo); s3s-fs 0.14.1 on 127.0.0.1:$PORT, its folder on $(df --output=source "$W" | tail -1)"

if want 1; then
echo "## 1. pipe (benches/remote.rs)"
PIPE_BENCH_REMOTE="s3://bench/pipe" PIPE_BENCH_MIB=$MIB PIPE_BENCH_DIR="$W/pipe" cargo bench -q --bench remote
fi

dvc_bench() { # $1: remote url (s3://...), $2: label
  (
    cd "$W" && rm -rf dvc && mkdir dvc && cd dvc && git init -q && "$T/venv/bin/dvc" init -q
    "$T/venv/bin/dvc" remote add -d -q s3 "$1"
    "$T/venv/bin/dvc" remote modify s3 endpointurl "$AWS_ENDPOINT_URL"
    head -c $((MIB << 20)) /dev/urandom > blob && sync
    "$T/venv/bin/dvc" add -q blob
    s=$(date +%s.%N); "$T/venv/bin/dvc" push -q; e=$(date +%s.%N)
    echo "dvc push ($2): $(python3 -c "print(f'{$e-$s:.2f} s, {$MIB*1.048576/($e-$s):.0f} MB/s')")"
    rm -rf .dvc/cache blob
    s=$(date +%s.%N)
    if "$T/venv/bin/dvc" pull -q > pull.log 2>&1; then
      e=$(date +%s.%N)
      echo "dvc pull ($2): $(python3 -c "print(f'{$e-$s:.2f} s, {$MIB*1.048576/($e-$s):.0f} MB/s')")"
    else
      echo "dvc pull ($2): failed: $(grep -m1 ERROR pull.log)"
    fi
  )
}
if want 2; then
echo "## 2. dvc $("$T/venv/bin/dvc" --version)"
dvc_bench s3://bench/dvc s3s-fs
fi
if want 3; then
echo "## 3. boto3 transfer manager (64 MiB parts, 4 threads)"
"$T/venv/bin/python3" - "$W" "$MIB" <<'PY'
import os, sys, time, boto3
from boto3.s3.transfer import TransferConfig
w, mib = sys.argv[1], int(sys.argv[2])
src = os.path.join(w, "boto-src")
with open(src, "wb") as f:
    f.write(os.urandom(mib << 20))
    f.flush(); os.fsync(f.fileno())
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
cfg = TransferConfig(multipart_chunksize=64 << 20, multipart_threshold=64 << 20, max_concurrency=4)
t = time.time(); s3.upload_file(src, "bench", "boto/blob", Config=cfg); up = time.time() - t
t = time.time(); s3.download_file("bench", "boto/blob", os.path.join(w, "boto-dst"), Config=cfg); down = time.time() - t
mb = (mib << 20) / 1e6
print(f"boto3 upload: {up:.2f} s, {mb/up:.0f} MB/s; download: {down:.2f} s, {mb/down:.0f} MB/s")
PY

fi
if want 4; then
echo "## 4. pipe and dvc on moto's server (dvc pull fails on s3s-fs: a HeadObject of a prefix answers 500)"
MPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$PWD/target/pyenv/bin/moto_server" -H 127.0.0.1 -p "$MPORT" > "$W/moto.log" 2>&1 &
moto=$!
trap 'kill "$server" "$moto" 2>/dev/null || true; rm -rf "$W"' EXIT
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$MPORT) 2>/dev/null && break; sleep 0.1; done
(
  export AWS_ENDPOINT_URL="http://127.0.0.1:$MPORT"
  "$T/venv/bin/python3" -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT_URL').create_bucket(Bucket='bench')"
  PIPE_BENCH_REMOTE="s3://bench/pipe" PIPE_BENCH_MIB=$MIB PIPE_BENCH_DIR="$W/pipe" cargo bench -q --bench remote
  dvc_bench s3://bench/dvc moto
)
kill "$moto"
fi

if want 5; then
echo "## 5. pipelines/fortune.yaml at the CI budget: run, then pulled by an empty checkout"
cargo build -q --bin pipe
PIPE="$PWD/target/debug/pipe"
BUDGET=(--set train.max_steps=4 --set train.batch_size=2 --set fix.eval_fraction=0.03 --set eval.max_new_tokens=8 --set export.greedy_tokens=8)
s=$(date +%s.%N); "$PIPE" --no-progress --cache "$W/fa" run pipelines/fortune.yaml --remote s3://bench/fortune "${BUDGET[@]}" -q; e=$(date +%s.%N)
echo "run + push: $(python3 -c "print(f'{$e-$s:.1f} s')")"
for rep in 1 2 3; do
s=$(date +%s.%N); "$PIPE" --no-progress --cache "$W/fb$rep" run pipelines/fortune.yaml --remote s3://bench/fortune "${BUDGET[@]}" --json > "$W/pull.json"; e=$(date +%s.%N)
python3 - "$W/pull.json" "$s" "$e" "$W/fb$rep" <<'PY'
import json, os, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
ran = [e["node"] for e in ev if e["event"] == "node_started"]
pulled = sum(e.get("pulled_bytes", 0) for e in ev if e["event"] == "node_cached")
fetched = "fetched" if os.path.exists(os.path.join(sys.argv[4], "sources")) else "not fetched"
print(f"cold checkout: {float(sys.argv[3]) - float(sys.argv[2]):.2f} s, pulled {pulled/1e6:.1f} MB, nodes run: {ran or 'none'}, model wheel {fetched}")
PY
done
fi
