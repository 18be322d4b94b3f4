#!/usr/bin/env bash
# Installs the build dependencies from Debian's archive (run as root, or with sudo available).
# Skips the install when every header is already present, so CI and repeated runs stay fast.
set -euo pipefail
need=0
for h in /usr/include/cjson/cJSON.h /usr/include/pcre2.h /usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h; do
  [ -f "$h" ] || need=1
done
command -v pkg-config >/dev/null || need=1
if [ $need = 1 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends gcc make pkg-config libcjson-dev libpcre2-dev libopenblas-openmp-dev
fi
echo "dependencies present"
