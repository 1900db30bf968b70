#!/bin/sh
# A libvirt <emulator> for domains protected by rephub: when the domain's <qemu:commandline>
# adds -repagent, QEMU runs through rephub-qemu (agent, NBD over a UNIX socket, clean stop);
# every other invocation (libvirt's capability probes, unprotected domains) runs QEMU as is.
# Install: cp to /usr/local/bin/qemu-repagent, chmod 755; see README.md, "QEMU and libvirt".
# Env (for tests): REPHUB_QEMU_BINARY (default /usr/bin/qemu-system-x86_64), REPHUB_QEMU (rephub-qemu).
QEMU=${REPHUB_QEMU_BINARY:-/usr/bin/qemu-system-x86_64}
for a in "$@"; do
  case $a in -repagent | --repagent) exec ${REPHUB_QEMU:-rephub-qemu} "$QEMU" "$@" ;; esac
done
exec "$QEMU" "$@"
