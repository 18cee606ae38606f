#!/usr/bin/env bash
# Install the system tools the test-suite drives, when they are missing and installing is permitted.
#
#   dcmtk            storescu, echoscu   send DICOM to the receiver like a modality would (tests/dicomnet)
#   chromium         chromium            the web page in a real headless browser (tests/serve/test_browser.py)
#   chromium-driver  chromedriver        Selenium's driver for it
#
# Idempotent: when every tool is on PATH it does nothing (no apt-get call). Otherwise it installs the
# missing Debian packages with apt-get, as root or through passwordless sudo. Where that is not
# permitted (not root and no passwordless sudo, no apt-get, or MEDFORENSICS_NO_SYSTEM_INSTALL=1) it
# says so and exits 0: the tests that need the tools are then skipped with the reason in pytest's
# summary, except under CI=true, where those tests fail. Under CI=true a failed install is an error.
set -euo pipefail

# package:command[,command…][:text its --version prints] (pynetdicom installs Python `storescu`/`echoscu`
# look-alikes into the virtualenv: only dcmtk's, whose --version says "$dcmtk:", count)
REQUIRED=('dcmtk:storescu,echoscu:$dcmtk:' "chromium:chromium" "chromium-driver:chromedriver")

say() { echo "system-deps: $*" >&2; }
in_ci() { case "${CI:-}" in 1|true|TRUE|True|yes) return 0 ;; *) return 1 ;; esac; }

has_tool() {  # has_tool COMMAND [SIGNATURE]: some COMMAND on PATH (whose --version prints SIGNATURE)
  local path version
  for path in $(type -ap "$1"); do
    [ -z "${2:-}" ] && return 0
    version=$("$path" --version 2>&1 </dev/null || true)
    [[ $version == *"$2"* ]] && return 0
  done
  return 1
}

missing=()
for entry in "${REQUIRED[@]}"; do
  IFS=: read -r pkg cmd_list signature <<<"$entry" || true
  IFS=, read -r -a cmds <<<"$cmd_list"
  for cmd in "${cmds[@]}"; do
    if ! has_tool "$cmd" "${signature:-}"; then
      missing+=("$pkg")
      break
    fi
  done
done
[ ${#missing[@]} -eq 0 ] && exit 0

not_installed() {
  say "not installing ${missing[*]}: $1; the tests that need them will be skipped (failed under CI=true)"
  exit 0
}
case "${MEDFORENSICS_NO_SYSTEM_INSTALL:-}" in
  ""|0|false|no) ;;
  *) not_installed "MEDFORENSICS_NO_SYSTEM_INSTALL is set" ;;
esac
command -v apt-get >/dev/null 2>&1 || not_installed "apt-get not found (install them with your system's package manager)"
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  not_installed "neither root nor passwordless sudo (run: sudo apt-get install ${missing[*]})"
fi

say "installing ${missing[*]} with apt-get"
apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -qq)
if "${apt[@]}" update >/dev/null && "${apt[@]}" install "${missing[@]}" >/dev/null; then
  exit 0
fi
say "apt-get could not install ${missing[*]}"
in_ci && exit 1
exit 0
