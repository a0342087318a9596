#!/usr/bin/env bash
# Installs NVRTC from Debian's non-free archive when no NVRTC is on the
# machine: TestStepKernelSpills and TestKernelUnits (ml/cuda) compile the
# kernels with it and read ptxas's report. No GPU or driver is needed.
set -euo pipefail
ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
if "$ldconfig" -p 2>/dev/null | grep -q 'libnvrtc\.so'; then
  exit 0
fi
sudo=
if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
. /etc/os-release
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
opts=
if [ -f $keyring ]; then opts="[signed-by=$keyring] "; fi
echo "deb ${opts}http://deb.debian.org/debian ${VERSION_CODENAME:-bookworm} non-free" | $sudo tee /etc/apt/sources.list.d/llmserve-nvrtc.list >/dev/null
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libnvrtc11.2 >/dev/null
"$ldconfig" -p | grep -q 'libnvrtc\.so' || { echo "install-nvrtc: libnvrtc not found after the install" >&2; exit 1; }
