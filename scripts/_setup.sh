# Sourced by scripts/test and scripts/demo: make a fresh Debian machine ready, idempotently.
# Creates .venv, installs the package with its test extras, installs OS packages that are missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
command -v ffmpeg >/dev/null 2>&1 || [ -n "${FFMPEG:-}" ] || need_apt+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || [ -n "${FFPROBE:-}" ] || need_apt+=(ffmpeg)
for extra in ${ASSETPREP_APT_EXTRA:-}; do
  case "$extra" in
    chromium) command -v chromium >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromium ] || need_apt+=(chromium) ;;
    chromium-headless-shell) command -v chromium-headless-shell >/dev/null 2>&1 || need_apt+=(chromium-headless-shell) ;;
    espeak-ng) command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng) ;;
    fonts-dejavu-core) [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core) ;;
    openssl) command -v openssl >/dev/null 2>&1 || need_apt+=(openssl) ;;
  esac
done
if [ ${#need_apt[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${need_apt[@]}" | sort -u | tr '\n' ' ')
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing: $pkgs and this system has no apt-get; install them with your package manager (or set FFMPEG/FFPROBE)"
    exit 1
  fi
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { say "missing: $pkgs; run as root or install them: apt-get install -y $pkgs"; exit 1; }
    SUDO="sudo"
  fi
  say "installing OS packages: $pkgs"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $pkgs >&2
fi

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { say "Python >= 3.11 is needed ($PY is older)"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=".venv/.assetprep-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing assetprep and its dependencies into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" >&2
  echo "$want" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
