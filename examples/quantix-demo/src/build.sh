#!/bin/sh
# Builds the qx-demo program: stamps the release version (QX_VERSION, set by qx-publish)
# into the script and writes it to build/qx-demo.
set -eu
: "${QX_VERSION:?QX_VERSION is set by qx-publish}"
mkdir -p build
sed "s/@VERSION@/${QX_VERSION}/" src/qx-demo.sh > build/qx-demo.tmp
chmod 0755 build/qx-demo.tmp
mv build/qx-demo.tmp build/qx-demo
echo "built build/qx-demo ${QX_VERSION}"
