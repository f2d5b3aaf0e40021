#!/bin/sh
# The data volume belongs to the `ldap` user of this image (see Dockerfile), then the image's own
# entrypoint runs unchanged.
set -e
chown ldap:ldap /var/lib/openldap/openldap-data
exec /docker-entrypoint.sh "$@"
