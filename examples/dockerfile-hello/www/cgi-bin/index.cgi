#!/bin/sh
# The page at /: the greeting and the version come from the env PaaSTech gives the app.
printf 'Content-Type: text/plain\r\n\r\n'
echo "${GREETING:-hello} from dockerfile-hello (version ${PAASTECH_VERSION:-unknown})"
