#!/usr/bin/env bash
# `make test-docker` (opt-in; root; a few GB of disk; 10-20 minutes the first time):
# builds a CPU variant of Dockerfile.gpu through `ft image build` (docker SDK) and runs a two-step SFT
# from a bundle in it through images.docker_run, the code path of `ft run BUNDLE --docker`.
#
# No container registry is reachable here, so the base image is made locally: Debian bookworm by
# debootstrap (its default mirror), `docker import`ed. Nothing here names a machine path or a package
# host: torch's wheel is fetched with this host's pip (`pip download torch==2.13.0 --no-deps`, from
# whatever index pip is configured with) and served on a throw-away local index, and the image's pip
# uses the index this host's pip is configured with (written into the base's /etc/pip.conf), or pip's
# own default when none is. Steps already done are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${BIN:-.venv/bin}"
WORK="${FT_DOCKER_TEST_DIR:-/tmp/ft-test-docker}"
BASE_IMAGE="${BASE_IMAGE:-ft-debian-base:bookworm}"
WHEEL_PORT="${WHEEL_PORT:-8765}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
mkdir -p "$WORK"
say() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then echo "test-docker: run as root (installs docker.io, starts dockerd)" >&2; exit 1; fi

# The index this host's pip uses (PIP_INDEX_URL, else pip's configuration, else pip's default), and the
# hosts it trusts; the image's pip is pointed at the same.
HOST_INDEX="${PIP_INDEX_URL:-$("$BIN/python" -m pip config get global.index-url 2>/dev/null || true)}"
HOST_INDEX="${HOST_INDEX:-$("$BIN/python" -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')}"
HOST_TRUSTED="${PIP_TRUSTED_HOST:-$("$BIN/python" -m pip config get global.trusted-host 2>/dev/null || true)}"

if [ -z "${TORCH_WHEEL:-}" ]; then
    say "pip download torch==$TORCH_VERSION --no-deps (this host's pip and index)"
    mkdir -p "$WORK/wheels"
    "$BIN/python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$WORK/wheels" "torch==$TORCH_VERSION"
    TORCH_WHEEL="$(ls "$WORK/wheels"/torch-"$TORCH_VERSION"*.whl | head -1)"
fi
case "$(basename "$TORCH_WHEEL")" in
    *+cpu*) ;;
    *) echo "test-docker: $(basename "$TORCH_WHEEL") is not torch's CPU build; configure pip's index for it" \
            "or set TORCH_WHEEL=PATH" >&2; exit 1 ;;
esac

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    say "installing docker.io and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $WORK/dockerd.log)"
    nohup dockerd >"$WORK/dockerd.log" 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null
fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "making $BASE_IMAGE with debootstrap"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" >"$WORK/debootstrap.log"   # its default mirror
    # Where this machine reaches the internet through a TLS-intercepting proxy, the host trusts the
    # proxy's CA; the local base must too (the image's ca-certificates package picks these up).
    mkdir -p "$WORK/rootfs/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    # The image's pip uses this host's index (a local test image only: the file stays in its base).
    printf '[global]\nindex-url = %s\n' "$HOST_INDEX" > "$WORK/rootfs/etc/pip.conf"
    if [ -n "$HOST_TRUSTED" ]; then printf 'trusted-host = %s\n' "$HOST_TRUSTED" >> "$WORK/rootfs/etc/pip.conf"; fi
    tar -C "$WORK/rootfs" -c . | docker import - "$BASE_IMAGE"
    rm -rf "$WORK/rootfs"
fi

say "serving $(basename "$TORCH_WHEEL") on a local index"
mkdir -p "$WORK/index/simple/torch"
cp -u "$TORCH_WHEEL" "$WORK/index/simple/torch/"
# torch's own page is served from here; every other project (torch's dependencies) is redirected to
# this host's index, as the PyTorch index itself serves them from elsewhere.
python3 - "$WHEEL_PORT" "$WORK/index" "${HOST_INDEX%/}" >"$WORK/index.log" 2>&1 <<'PY' &
import functools
import http.server
import sys


class Index(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "simple" and parts[1] != "torch":
            self.send_response(302)
            self.send_header("Location", f"{sys.argv[3]}/{parts[1]}/")
            self.end_headers()
            return
        super().do_GET()


handler = functools.partial(Index, directory=sys.argv[2])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
PY
INDEX_PID=$!
trap 'kill $INDEX_PID 2>/dev/null || true' EXIT
sleep 1

say "building the CPU variant of Dockerfile.gpu (log: $WORK/build.log)"
start=$(date +%s)
"$BIN/python" -m images.cli build gpu --network host \
    --build-arg "BASE=$BASE_IMAGE" \
    --build-arg "TORCH_INDEX_URL=http://127.0.0.1:$WHEEL_PORT/simple" \
    --build-arg FLASH_ATTN_VERSION=none --build-arg VLLM=none >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
IMAGE="$(tail -1 "$WORK/build.log")"
grep -E "^step |torch |smoke test" "$WORK/build.log" | tail -8
echo "built $IMAGE in $(( $(date +%s) - start )) s; $(docker image inspect -f '{{.Size}}' "$IMAGE" | numfmt --to=iec)"

say "bundle: the demo spec, one SFT stage of two steps"
rm -rf "$WORK/bundles" "$WORK/store"
"$BIN/python" - "$WORK/bundles" >"$WORK/bundle.txt" <<'EOF'
import sys
from pathlib import Path

import yaml

from trainer.bundle import write_bundle
from trainer.spec import parse_spec

raw = yaml.safe_load(Path("configs/demo.yaml").read_text())
sft = next(s for s in raw["stages"] if s["method"] == "sft")
raw["stages"] = [{**sft, "max_steps": 2, "save_steps": 1, "per_device_train_batch_size": 2, "max_length": 128}]
spec = parse_spec(raw, "configs/demo.yaml (test-docker)")
print(write_bundle(spec, Path("configs"), Path(sys.argv[1])).path)
EOF
BUNDLE="$(cat "$WORK/bundle.txt")"
# write_bundle makes its folder with mkdtemp (mode 0700); as root here, the container's user
# (1000) could not read it. ft run --docker checks this and says so; here we just open it up.
chmod -R a+rX "$BUNDLE"
echo "$BUNDLE"

say "ft run $BUNDLE --docker (image $IMAGE)"
"$BIN/python" - "$BUNDLE" "$IMAGE" "$WORK/store" <<'EOF'
import sys
from pathlib import Path

from images.docker_run import format_docker_command, run_in_docker, run_request

bundle, image, store = sys.argv[1:]
request = run_request(bundle, None, image=image, store=store, run_id="test-docker", hf_cache=None)
print(format_docker_command(request), flush=True)
code = run_in_docker(request)
print(f"exit code {code}")
finals = sorted(p.parent for p in Path(store).glob("runs/test-docker/**/final/_COMPLETE"))
print("final outputs:", *(f"{p} ({', '.join(sorted(f.name for f in p.iterdir()))})" for p in finals), sep="\n  ")
sys.exit(code or (0 if finals and (finals[0] / "adapter_config.json").exists() else 1))
EOF
say "test-docker passed"
