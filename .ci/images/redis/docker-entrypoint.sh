#!/bin/sh
# Like the official image's entrypoint: a config file or an option as the first argument means
# redis-server; started as root it owns /data and drops to the redis user.
set -e
case "$1" in
    -* | *.conf) set -- redis-server "$@" ;;
esac
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
