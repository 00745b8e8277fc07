#!/bin/sh
# The images' dependency install (Dockerfile, deps stages): pip with a site's build secrets when they are
# given, a pip.conf (index, proxy) and a CA bundle, mounted only for this step so neither lands in a layer.
# Unset secrets arrive as empty files, which leave pip on its defaults. With only pyproject.toml beside
# it, the project builds as an empty wheel; that is removed again, since the code runs from /app.
set -eu
if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi
if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi
pip install "$@"
pip uninstall -y -q vigil
