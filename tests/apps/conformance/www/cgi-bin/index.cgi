#!/bin/sh
# The conformance app's page: who answered and what it was given.
echo "cgi: served $REQUEST_URI" >&2
printf 'Content-Type: text/plain\r\n\r\n'
echo "marker=${MARKER:-unset}"
echo "port=${PORT:-unset}"
echo "instance=$(cat /proc/sys/kernel/hostname):${PORT:-unset}"
echo "version=${PAASTECH_VERSION:-unset}"
echo "greeting=${GREETING:-unset}"
