#!/usr/bin/env bash
# A software GPU for `--device webgpu` on a machine without one (CI, this project's machines): Mesa's
# lavapipe Vulkan driver and the Vulkan loader, fetched from Debian's archive with a private apt
# configuration and unpacked with `dpkg -x` into .gpu/ (git-ignored). The system is left untouched:
# nothing is installed, and the environment that points the loader at the driver is printed, to eval:
#
#   eval "$(scripts/software-gpu.sh)"      # sets VK_ICD_FILENAMES and LD_LIBRARY_PATH
#
# Why backports on Debian 12: Dawn (the WebGPU implementation inside onnxruntime) refuses bookworm's
# lavapipe (Mesa 22.3: "Vulkan shaderUniform*ArrayDynamicIndexing required"); Mesa 25 from
# bookworm-backports works, and needs libdrm >= 2.4.121 from there too. Debian 13 has Mesa 25 in main.
#
# Idempotent: a second run only prints the environment. Exits non-zero with one line on stderr saying
# why when the packages cannot be had. DTRAIN_GPU_DIR overrides .gpu/, DEBIAN_MIRROR the archive.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${DTRAIN_GPU_DIR:-$root/.gpu}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

fail() {
  echo "software-gpu: $*" >&2
  exit 1
}

# The environment to eval, from what was unpacked (the library folder holds the loader unless the system has one).
print_env() {
  printf 'export VK_ICD_FILENAMES=%q\n' "$dir/lvp_icd.json"
  printf 'export LD_LIBRARY_PATH=%q"${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"\n' "$(cat "$dir/libdir")"
}

# The apt sources for this release: the suite and, on Debian 12, its backports (see above).
write_sources() {
  local codename keyring='' suites
  [ -r /etc/os-release ] || fail "no /etc/os-release: cannot tell which Debian release this is"
  # shellcheck disable=SC1091
  codename=$(. /etc/os-release && [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}")
  [ -n "$codename" ] || fail "not a Debian system (lavapipe is fetched from Debian's archive); install a Vulkan driver (mesa-vulkan-drivers) instead"
  case $codename in
    buster | bullseye) fail "Debian $codename's Mesa is too old for Dawn and has no Mesa 25 backport; use Debian 12 or later" ;;
    bookworm) suites="bookworm bookworm-backports" ;;
    *) suites=$codename ;;
  esac
  [ -r /usr/share/keyrings/debian-archive-keyring.gpg ] && keyring=' [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]'
  for suite in $suites; do echo "deb$keyring $mirror $suite main"; done > "$dir/apt/sources.list"
  echo "$codename"
}

# The packages to fetch, as name=version: what installing them would add or upgrade on this system.
resolve() {
  local codename=$1 from=''
  [ "$codename" = bookworm ] && from=/bookworm-backports
  apt-get "${apt[@]}" -s install --no-install-recommends \
    "mesa-vulkan-drivers$from" "libdrm2$from" "libdrm-amdgpu1$from" libvulkan1 > "$dir/apt/resolve.out" 2> "$dir/apt/resolve.log" || true
  sed -n 's/^Inst \([^ ]*\) .*(\([^ ]*\) .*/\1=\2/p' "$dir/apt/resolve.out"
}

main() {
  [ "$(uname -s)" = Linux ] || fail "lavapipe from Debian is for Linux; on $(uname -s) use the system's Vulkan or Metal driver"
  mkdir -p "$dir"
  exec 9> "$dir/.lock"
  flock 9 # one fetch at a time (test runs in parallel)
  if [ -f "$dir/env.done" ] && [ -f "$dir/lvp_icd.json" ]; then print_env; return; fi
  command -v apt-get > /dev/null && command -v dpkg > /dev/null || fail "apt-get and dpkg are needed to fetch lavapipe"
  local multiarch
  multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2> /dev/null || gcc -print-multiarch 2> /dev/null || echo "$(uname -m)-linux-gnu")
  rm -rf "$dir/apt" "$dir/debs" "$dir/unpacking"
  mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/debs" "$dir/unpacking"
  local codename
  codename=$(write_sources)
  apt=(-o "Dir::Etc::SourceList=$dir/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt/cache" -o APT::Sandbox::User="$(id -un)")
  # apt-get update exits 0 when a source is out of reach: the lists it wrote say whether it got them.
  apt-get "${apt[@]}" -qq update > "$dir/apt/update.log" 2>&1 || true
  compgen -G "$dir/apt/lists/*_Packages*" > /dev/null ||
    fail "cannot read Debian's package lists from $mirror ($(grep -m1 -E '^(W|E):' "$dir/apt/update.log" || echo 'no reason given'))"
  local packages
  packages=$(resolve "$codename")
  grep -q '^mesa-vulkan-drivers=' <<< "$packages" || fail "apt could not resolve mesa-vulkan-drivers for Debian $codename: $(grep -m1 '^E:' "$dir/apt/resolve.log" || echo 'no reason given')"
  # shellcheck disable=SC2086
  (cd "$dir/debs" && apt-get "${apt[@]}" -qq download $packages > ../apt/download.log 2>&1) || fail "cannot download $(echo $packages | tr '\n' ' ')from $mirror"
  for deb in "$dir"/debs/*.deb; do dpkg -x "$deb" "$dir/unpacking"; done
  local libdir="$dir/root/usr/lib/$multiarch"
  [ -f "$dir/unpacking/usr/lib/$multiarch/libvulkan_lvp.so" ] || fail "the unpacked packages hold no usr/lib/$multiarch/libvulkan_lvp.so"
  rm -rf "$dir/root" && mv "$dir/unpacking" "$dir/root"
  # The package's ICD file names the driver by its bare name; the loader needs the path of this copy.
  sed "s#\"library_path\": *\"[^\"]*\"#\"library_path\": \"$libdir/libvulkan_lvp.so\"#" \
    "$dir/root/usr/share/vulkan/icd.d/lvp_icd.json" > "$dir/lvp_icd.json"
  echo "$libdir" > "$dir/libdir"
  rm -rf "$dir/debs" "$dir/apt/cache" "$dir/apt/lists"
  touch "$dir/env.done"
  print_env
}

main "$@"
