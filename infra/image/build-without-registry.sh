#!/usr/bin/env bash
# Build and try the image on a machine that reaches Debian's and PyPI's mirrors but no container
# registry (the python base image cannot be pulled). A stand-in base is made with debootstrap
# (Debian bookworm with its Python 3.11, python-is-python3, and this machine's CA bundle so pip
# trusts what the host trusts), then the Dockerfile is built on it with buildah (daemonless, vfs
# storage, chroot isolation), and the entry commands run in the image as its user.
#
#   apt-get install -y buildah debootstrap        # once, as root
#   infra/image/build-without-registry.sh [TAG]   # default localhost/orchestration:dev
#
# The stand-in differs from the real base in its patch release (Debian's 3.11.2, not 3.11.7) and
# its extra packages; the Dockerfile is the same.
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${1:-localhost/orchestration:dev}
BASE=localhost/bookworm-python:3.11
ROOTFS=${ROOTFS:-/var/tmp/orchestration-bookworm-rootfs}
B=(buildah --storage-driver vfs)

if ! "${B[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
  if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
      bookworm "$ROOTFS"
    chroot "$ROOTFS" apt-get clean
  fi
  cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  container=$("${B[@]}" from scratch)
  mount=$("${B[@]}" mount "$container")
  cp -a "$ROOTFS/." "$mount/"
  "${B[@]}" umount "$container"
  "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$container"
  "${B[@]}" commit "$container" "$BASE"
  "${B[@]}" rm "$container" >/dev/null
fi

"${B[@]}" bud --isolation chroot --network host --build-arg "PYTHON_IMAGE=$BASE" -t "$TAG" .

container=$("${B[@]}" from "$TAG")
trap '"${B[@]}" rm "$container" >/dev/null' EXIT
for command in "orchestration --help" "orchestration worker --help" "orchestration listen --help" \
  "orchestration serve-api --help" "prefect worker start --help" "prefect server start --help" \
  "id -u" "python /opt/healthcheck.py"; do
  echo "== $command"
  # shellcheck disable=SC2086  # the words of the command
  "${B[@]}" run --isolation chroot "$container" -- $command | tail -n 3
done
echo "built and ran $TAG"
