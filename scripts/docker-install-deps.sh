#!/bin/sh
# The images' dependency install (Dockerfile, deps stages): one role's lock file (requirements/<role>.txt,
# made by `make lock`), every package pinned and checked against its hash, wheels only (no compiler in the
# images). The project itself is not installed: the code runs from /app.
# pip gets a site's build secrets when they are given, a pip.conf (index, proxy) and a CA bundle, mounted
# only for this step so neither lands in a layer. Unset secrets arrive as empty files, which leave pip on
# its defaults.
set -eu
if [ "$#" -ne 1 ]; then echo "usage: install-deps requirements/<role>.txt" >&2; exit 2; fi
if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi
if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi
pip install --require-hashes --only-binary=:all: -r "$1"
