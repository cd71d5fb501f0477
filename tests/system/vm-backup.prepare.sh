set -euo pipefail
umask 077
rm -rf /var/lib/llmvisor-backup
install -d -m 700 /var/lib/llmvisor-backup
if [ -e /var/lib/llmvisor/usage.sqlite ]; then
  /nix/store/00000000000000000000000000000000-llmvisor/bin/llmvisor store-backup --db /var/lib/llmvisor/usage.sqlite /var/lib/llmvisor-backup/usage.sqlite
else
  echo "llmvisor's usage store /var/lib/llmvisor/usage.sqlite does not exist yet; nothing to copy"
fi

if [ -e /var/lib/private/open-webui/webui.db ]; then
  /nix/store/00000000000000000000000000000000-llmvisor/bin/llmvisor store-backup --db /var/lib/private/open-webui/webui.db /var/lib/llmvisor-backup/open-webui-webui.db
fi

/nix/store/00000000000000000000000000000000-util-linux/bin/runuser -u postgres -- /nix/store/00000000000000000000000000000000-postgresql/bin/pg_dump --format=custom n8n > /var/lib/llmvisor-backup/n8n.pgdump


ls -l /var/lib/llmvisor-backup
