#!/bin/sh
# Install the edgehub agent on a device (Debian-like, run as root):
#   ./install-agent.sh agent-cam-01.toml [edgehub-source]
# The config is the one `edgehub fleet enroll` wrote; it holds the device's password.
set -eu
config=${1:?usage: install-agent.sh AGENT_CONFIG.toml [PIP_SOURCE]}
source=${2:-edgehub}
id -u edgehub >/dev/null 2>&1 || useradd --system --home /var/lib/edgehub --shell /usr/sbin/nologin edgehub
python3 -m venv /opt/edgehub/venv
/opt/edgehub/venv/bin/pip install --quiet "${source}[agent]"
install -d -o edgehub -g edgehub -m 0700 /etc/edgehub /var/lib/edgehub
# The agent's data lives in /var/lib/edgehub whatever the enrolling machine wrote.
sed 's|^data_dir = .*|data_dir = "/var/lib/edgehub"|' "$config" > /etc/edgehub/agent.toml
chown edgehub:edgehub /etc/edgehub/agent.toml
chmod 0600 /etc/edgehub/agent.toml
install -m 0644 "$(dirname "$0")/edgehub-agent.service" /etc/systemd/system/edgehub-agent.service
systemctl daemon-reload
systemctl enable --now edgehub-agent.service
echo "edgehub agent installed and started: journalctl -u edgehub-agent -f"
