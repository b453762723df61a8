# Start command of a RunPod pod made by the understudy provider (bash, run as the
# container's command). It installs the service's host key before sshd starts, so that the
# first connection is already pinned, keeps the official images' start flow (/start.sh:
# $PUBLIC_KEY into authorized_keys, the other host key types, sshd), and runs the watchdog
# as the main process: when it exits, the pod stops.
set -u
umask 077
if [ -n "${UNDERSTUDY_HOST_KEY:-}" ]; then
  mkdir -p /etc/ssh
  printf '%s' "$UNDERSTUDY_HOST_KEY" | base64 -d >/etc/ssh/ssh_host_ed25519_key
  chmod 600 /etc/ssh/ssh_host_ed25519_key
  ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key >/etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null || true
  chmod 644 /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null || true
fi
mkdir -p /usr/local/sbin
printf '%s' "$UNDERSTUDY_WATCHDOG" | base64 -d >/usr/local/sbin/understudy-watchdog
chmod 700 /usr/local/sbin/understudy-watchdog
if [ -x /start.sh ]; then
  /start.sh &
else
  # Not an official image: do what its start script would.
  mkdir -p ~/.ssh && chmod 700 ~/.ssh
  printf '%s\n' "${PUBLIC_KEY:-}" >>~/.ssh/authorized_keys && chmod 600 ~/.ssh/authorized_keys
  ssh-keygen -A >/dev/null 2>&1 || true
  mkdir -p /run/sshd
  service ssh start >/dev/null 2>&1 || /usr/sbin/sshd
fi
exec /usr/local/sbin/understudy-watchdog exit
