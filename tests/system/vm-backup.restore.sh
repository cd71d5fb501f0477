set -euo pipefail
snapshot=${1:-latest}
export RESTIC_REPOSITORY_FILE=/etc/llmvisor-test/restic-repository
export RESTIC_PASSWORD_FILE=/etc/llmvisor-test/restic-password

restic=/nix/store/00000000000000000000000000000000-restic/bin/restic
echo "restoring snapshot $snapshot"
running=()
for u in llmvisor.service open-webui.service n8n.service; do
  if systemctl is-active --quiet "$u"; then running+=("$u"); fi
done
systemctl stop llmvisor.service open-webui.service n8n.service
rm -rf /var/lib/llmvisor-backup
"$restic" restore "$snapshot" --target / --include /var/lib/llmvisor-backup --include /var/lib/private/open-webui --include /var/lib/private/n8n
swap() { # swap COPY DB: the database copy in place of DB, owned like its directory
  [ -e "$1" ] || return 0
  # A directory that is there keeps its mode: llmvisor's must stay 0755 (its
  # models' users pass through it).
  [ -d "$(dirname "$2")" ] || install -d -m 755 "$(dirname "$2")"
  rm -f "$2" "$2-wal" "$2-shm" "$2-journal"
  cp "$1" "$2"
  chown --reference="$(dirname "$2")" "$2"
  chmod 600 "$2"
  echo "restored $2"
}
swap /var/lib/llmvisor-backup/usage.sqlite /var/lib/llmvisor/usage.sqlite
swap /var/lib/llmvisor-backup/open-webui-webui.db /var/lib/private/open-webui/webui.db
# nixos-25.11 makes n8n's database and role (ensureDatabases, ensureUsers)
# in postgresql-setup.service, after postgresql.service: on a new or wiped
# host they exist only once it has run. postgresql.target requires both and
# is ordered after them; an older nixpkgs without it makes them in
# postgresql.service's own postStart.
if systemctl cat postgresql.target > /dev/null 2>&1; then
  systemctl start postgresql.target
else
  systemctl start postgresql.service
fi
# The dump is root's (in a directory only root reads): it is read by this
# shell, not by the postgres user.
/nix/store/00000000000000000000000000000000-util-linux/bin/runuser -u postgres -- /nix/store/00000000000000000000000000000000-postgresql/bin/pg_restore --clean --if-exists -d n8n < /var/lib/llmvisor-backup/n8n.pgdump
echo "restored n8n's database"

if [ ${#running[@]} -gt 0 ]; then systemctl start "${running[@]}"; fi

