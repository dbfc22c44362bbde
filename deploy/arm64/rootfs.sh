#!/usr/bin/env bash
# An arm64 (aarch64) Debian root file system with the edgehub agent's dependencies, run on an
# x86_64 machine under qemu user-mode emulation: the agent, its benchmark child and the aarch64
# wheels of ONNX Runtime and LiteRT execute ARM code (ARM kernels, ARM rounding), before any
# hardware is bought. Timings under emulation mean nothing; correctness is the point.
#
#   sudo deploy/arm64/rootfs.sh [ROOT]      (default /var/tmp/edgehub-arm64; about 5 minutes, 640 MB)
#   sudo unshare --mount --fork --pid --mount-proc=ROOT/proc chroot ROOT /opt/edgehub/bin/python -c \
#        'import platform, onnxruntime; print(platform.machine(), onnxruntime.__version__)'
#
# Needs root (binfmt_misc, chroot) and Debian's qemu-user-static and mmdebstrap (installed here
# when missing). Re-running it on a finished ROOT only re-registers the emulator.
set -euo pipefail
ROOT=${1:-${EDGEHUB_ARM64_ROOT:-/var/tmp/edgehub-arm64}}
REPO=$(cd "$(dirname "$0")/../.." && pwd)

need=()
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# Register qemu-aarch64 with the kernel (F: the interpreter is opened now, so it works in a chroot).
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
fi

in_root() {  # run a shell command inside root file system $1 (private mounts, clean environment)
  unshare --mount --fork --pid --mount-proc="$1/proc" chroot "$1" /usr/bin/env -i \
    PATH=/usr/bin:/bin HOME=/root PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt /bin/sh -c "$2"
}

# An older board's stack beside the main one: tflite-runtime 2.14 (needs numpy < 2), the agent's
# fallback for .tflite files where ai-edge-litert is absent, in its own venv without LiteRT or
# ONNX Runtime. It computes some dynamic-range models wrongly; the reference check must catch it.
tflite_venv() {
  python3 - "$REPO/pyproject.toml" > "$1/tmp/tflite-requirements.txt" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
agent = [r for r in project["optional-dependencies"]["agent"] if not r.startswith(("onnxruntime", "ai-edge-litert"))]
print("\n".join([r for r in project["dependencies"] if not r.startswith("numpy")] + agent
                + ["numpy<2", "tflite-runtime==2.14.0"]))
EOF
  in_root "$1" 'python3 -m venv /opt/edgehub-tflite && /opt/edgehub-tflite/bin/pip install -q -r /tmp/tflite-requirements.txt'
}

if [ -x "$ROOT/opt/edgehub/bin/python" ]; then
  [ -x "$ROOT/opt/edgehub-tflite/bin/python" ] || tflite_venv "$ROOT"
  echo "arm64 root file system ready at $ROOT"
  exit 0
fi

rm -rf "$ROOT.partial"
mmdebstrap --quiet --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$ROOT.partial" http://deb.debian.org/debian
# The host's certificate bundle: PyPI is reached the way the host reaches it (a proxy's CA included).
cp /etc/ssl/certs/ca-certificates.crt "$ROOT.partial/etc/ssl/certs/ca-certificates.crt"
# The agent's dependencies as pyproject.toml names them (base + the `agent` extra), aarch64 wheels.
python3 - "$REPO/pyproject.toml" > "$ROOT.partial/tmp/agent-requirements.txt" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["agent"]))
EOF
in_root "$ROOT.partial" 'python3 -m venv /opt/edgehub && /opt/edgehub/bin/pip install -q -r /tmp/agent-requirements.txt'
tflite_venv "$ROOT.partial"
mv "$ROOT.partial" "$ROOT"
echo "arm64 root file system ready at $ROOT"
