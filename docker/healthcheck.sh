#!/bin/bash
# The image's HEALTHCHECK: exit 0 when GET /healthz on ficus's admin API answers 200, else 1.
# bash's /dev/tcp does the request, so the image needs no HTTP client. The address is
# FICUS_HEALTH_ADDR (host:port, default 127.0.0.1:9901, the admin port of docker/ficus.json).
addr=${FICUS_HEALTH_ADDR:-127.0.0.1:9901}
exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}" 2>/dev/null || exit 1
printf 'GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$addr" >&3 || exit 1
IFS= read -r -t 3 status <&3 || exit 1
case $status in
"HTTP/1."?" 200 "*) exit 0 ;;
*) exit 1 ;;
esac
