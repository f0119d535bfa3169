#!/usr/bin/env bash
# Installs the Debian packages Millrace builds and runs with, if any is missing.
# Needs root (uses sudo when not root). Safe to rerun: does nothing when all are present.
set -euo pipefail

packages=(
  pkg-config
  libopenblas-dev        # BLAS (cblas_sgemm) under the kernels
  libpng-dev             # PNG codec
  libjpeg-dev            # JPEG codec (libjpeg-turbo)
  libmicrohttpd-dev      # HTTP server
  libfreetype-dev        # emoji rendering
  libharfbuzz-dev        # emoji sequences (flags, keycaps, ZWJ)
  fonts-noto-color-emoji # the dataset's source font
  unicode-data           # emoji-test.txt: the dataset's labels
  fonts-dejavu-core      # labels on grids and plots
  chromium               # the browser test of the page
  libkissfft-dev         # FFT for Batch Styles Standardization
  curl                   # the tests' real HTTP client (multipart uploads)
  ffmpeg                 # the tests' standard reader of a JPEG stream output (mpjpeg)
  python3                # scripts/attack.sh, scripts/load-test.sh
  nginx                  # reverse proxy in front of replicas (scripts/cluster.sh)
  openmpi-bin            # mpirun, for data-parallel training over processes (docs/TRAINING.md)
  libopenmpi-dev         # Open MPI's library (libmpi.so.40), opened by gen only under mpirun
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
