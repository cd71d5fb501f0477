# llmvisor.backup: the host's state backed up with restic, on NixOS's own
# `services.restic.backups` (a timer, encryption, pruning): llmvisor's usage store
# and Open WebUI's database through SQLite's online backup (`llmvisor store-backup`,
# never a copy of a live database and its -wal), Open WebUI's other files, n8n's
# PostgreSQL database (`pg_dump`) and its state directory, and Qdrant's collections
# (its snapshot API). The repository location and its password come from files
# outside the Nix store. `llmvisor-backup-restore` puts a snapshot back
# (docs/operations.md, "Backups"; tests/nixos/backup.nix).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.llmvisor.backup;
  lv = config.services.llmvisor;
  fe = config.llmvisor.frontends;
  llmvisor = lib.getExe lv.package;
  staging = cfg.stagingDir;

  # Where llmvisor keeps its usage store: `[store] path`, relative to the
  # configuration file's directory, else the unit's state directory.
  storePath = lv.settings.store.path or null;
  usageDb =
    if storePath == null then
      "/var/lib/llmvisor/usage.sqlite"
    else if lib.hasPrefix "/" storePath then
      storePath
    else
      "/etc/llmvisor/${storePath}";

  # The front-ends run with DynamicUser=, so their state directories are under
  # /var/lib/private (the /var/lib/<name> links exist only while they run).
  openWebuiDir = "/var/lib/private/open-webui";
  n8nDir = "/var/lib/private/n8n";
  qdrantUrl = "http://127.0.0.1:${toString (config.services.qdrant.settings.service.http_port or 6333)}";
  postgres = config.services.postgresql.package;
  runuser = "${pkgs.util-linux}/bin/runuser";
  curl = lib.getExe pkgs.curl;
  jq = lib.getExe pkgs.jq;

  services =
    lib.optional cfg.usageStore "llmvisor.service"
    ++ lib.optional cfg.openWebui "open-webui.service"
    ++ lib.optional cfg.n8n "n8n.service";

  # restic's unit runs it (as a script of its own, from its preStart) before each
  # backup.
  prepare = ''
    set -euo pipefail
    umask 077
    rm -rf ${staging}
    install -d -m 700 ${staging}
    ${lib.optionalString cfg.usageStore ''
      if [ -e ${usageDb} ]; then
        ${llmvisor} store-backup --db ${usageDb} ${staging}/usage.sqlite
      else
        echo "llmvisor's usage store ${usageDb} does not exist yet; nothing to copy"
      fi
    ''}
    ${lib.optionalString cfg.openWebui ''
      if [ -e ${openWebuiDir}/webui.db ]; then
        ${llmvisor} store-backup --db ${openWebuiDir}/webui.db ${staging}/open-webui-webui.db
      fi
    ''}
    ${lib.optionalString cfg.n8n ''
      ${runuser} -u postgres -- ${postgres}/bin/pg_dump --format=custom n8n > ${staging}/n8n.pgdump
    ''}
    ${lib.optionalString cfg.qdrant ''
      # Qdrant's HTTP API (its OpenAPI description, docs/redoc/master/openapi.json):
      # get_collections answers result.collections[].name, create_snapshot
      # result.name; get_snapshot is the file; a collection's name holds no `/`.
      install -d -m 700 ${staging}/qdrant
      ${curl} -fsS ${qdrantUrl}/collections | ${jq} -r '.result.collections[].name' |
        while read -r c; do
          enc=$(${jq} -rn --arg c "$c" '$c | @uri')
          snap=$(${curl} -fsS -X POST "${qdrantUrl}/collections/$enc/snapshots?wait=true" | ${jq} -r .result.name)
          ${curl} -fsS -o "${staging}/qdrant/$c.snapshot" "${qdrantUrl}/collections/$enc/snapshots/$snap"
          ${curl} -fsS -X DELETE "${qdrantUrl}/collections/$enc/snapshots/$snap" > /dev/null
        done
    ''}
    ls -l ${staging}
  '';

  # Puts a snapshot back: stops the services, restores the files, swaps the
  # database copies in (removing any stale -wal/-shm first), loads n8n's dump,
  # starts again the services that were running, loads Qdrant's snapshots.
  restore = pkgs.writeShellScriptBin "llmvisor-backup-restore" ''
    set -euo pipefail
    snapshot=''${1:-latest}
    export RESTIC_REPOSITORY_FILE=${lib.escapeShellArg cfg.repositoryFile}
    export RESTIC_PASSWORD_FILE=${lib.escapeShellArg cfg.passwordFile}
    ${lib.optionalString (cfg.environmentFile != null) ''
      set -a
      . ${lib.escapeShellArg cfg.environmentFile}
      set +a
    ''}
    restic=${lib.getExe pkgs.restic}
    echo "restoring snapshot $snapshot"
    running=()
    for u in ${lib.concatStringsSep " " services}; do
      if systemctl is-active --quiet "$u"; then running+=("$u"); fi
    done
    ${lib.optionalString (services != [ ]) "systemctl stop ${lib.concatStringsSep " " services}"}
    rm -rf ${staging}
    "$restic" restore "$snapshot" --target / --include ${staging} ${
      lib.optionalString cfg.openWebui "--include ${openWebuiDir}"
    } ${lib.optionalString cfg.n8n "--include ${n8nDir}"}
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
    ${lib.optionalString cfg.usageStore "swap ${staging}/usage.sqlite ${usageDb}"}
    ${lib.optionalString cfg.openWebui "swap ${staging}/open-webui-webui.db ${openWebuiDir}/webui.db"}
    ${lib.optionalString cfg.n8n ''
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
      ${runuser} -u postgres -- ${postgres}/bin/pg_restore --clean --if-exists -d n8n < ${staging}/n8n.pgdump
      echo "restored n8n's database"
    ''}
    if [ ''${#running[@]} -gt 0 ]; then systemctl start "''${running[@]}"; fi
    ${lib.optionalString cfg.qdrant ''
      # recover_from_uploaded_snapshot: a multipart field `snapshot`; priority
      # `snapshot` prefers the snapshot's data over what the collection holds.
      for f in ${staging}/qdrant/*.snapshot; do
        [ -e "$f" ] || continue
        c=$(basename "$f" .snapshot)
        enc=$(${jq} -rn --arg c "$c" '$c | @uri')
        ${curl} -fsS -X POST "${qdrantUrl}/collections/$enc/snapshots/upload?priority=snapshot" -F "snapshot=@$f" > /dev/null
        echo "restored Qdrant collection $c"
      done
    ''}
  '';

  fileOption =
    what: example:
    mkOption {
      type = types.str;
      inherit example;
      description = "A file outside the Nix store with ${what}, read by restic when it runs.";
    };
in
{
  imports = [
    ./llmvisor.nix
    ./frontends.nix
  ];

  options.llmvisor.backup = {
    enable = lib.mkEnableOption "restic backups of llmvisor's usage store and the front-ends' data (`services.restic.backups.llmvisor`)";

    repositoryFile = fileOption "the restic repository's location (`/mnt/backup/llmvisor`, `s3:https://…/bucket`, `sftp:host:/path`, …)" "/run/secrets/restic-repository";

    passwordFile = fileOption "the repository's password (restic encrypts with it)" "/run/secrets/restic-password";

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/restic-s3.env";
      description = ''
        A file outside the Nix store with the repository's credentials as
        environment variables (`AWS_ACCESS_KEY_ID=…`, `AWS_SECRET_ACCESS_KEY=…`
        for S3), in systemd's `EnvironmentFile=` format.
      '';
    };

    timerConfig = mkOption {
      type = types.nullOr (types.attrsOf types.str);
      default = {
        OnCalendar = "03:00";
        RandomizedDelaySec = "30m";
        Persistent = "true";
      };
      example = {
        OnCalendar = "hourly";
      };
      description = "When the backup runs (`systemd.timer(5)`); `Persistent` catches up on a run missed while the host was off. `null`: no timer (`systemctl start restic-backups-llmvisor` by hand).";
    };

    pruneOpts = mkOption {
      type = types.listOf types.str;
      default = [
        "--keep-daily 7"
        "--keep-weekly 5"
        "--keep-monthly 12"
      ];
      example = [ "--keep-daily 30" ];
      description = "Which snapshots `restic forget --prune` keeps after each backup.";
    };

    initialize = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = "Create the repository on the first run if it does not exist.";
    };

    usageStore = mkOption {
      type = types.bool;
      default = lv.enable && (lv.settings.store.enabled or true);
      defaultText = lib.literalExpression "config.services.llmvisor.enable && (config.services.llmvisor.settings.store.enabled or true)";
      example = false;
      description = "Back up llmvisor's usage store (`llmvisor store-backup`, SQLite's online backup).";
    };

    openWebui = mkOption {
      type = types.bool;
      default = fe.openWebui.enable;
      defaultText = lib.literalExpression "config.llmvisor.frontends.openWebui.enable";
      example = false;
      description = "Back up Open WebUI's state: `webui.db` through SQLite's online backup, its other files (uploads, …) as they are.";
    };

    n8n = mkOption {
      type = types.bool;
      default = fe.n8n.enable;
      defaultText = lib.literalExpression "config.llmvisor.frontends.n8n.enable";
      example = false;
      description = "Back up n8n: its PostgreSQL database with `pg_dump` and its state directory (which holds the key its stored credentials are encrypted with).";
    };

    qdrant = mkOption {
      type = types.bool;
      default = config.services.qdrant.enable;
      defaultText = lib.literalExpression "config.services.qdrant.enable";
      example = false;
      description = "Back up every Qdrant collection through Qdrant's snapshot API.";
    };

    paths = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "/var/lib/secrets" ];
      description = "More paths to back up.";
    };

    stagingDir = mkOption {
      type = types.str;
      default = "/var/lib/llmvisor-backup";
      example = "/srv/backup-staging";
      description = "Where the database copies, dumps and snapshots are made before restic reads them (emptied at each run; holds the last run's).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      map
        (o: {
          assertion = o.value == null || (lib.hasPrefix "/" o.value && !lib.hasPrefix builtins.storeDir o.value);
          message = "llmvisor.backup.${o.name}: `${toString o.value}` must be an absolute path outside the Nix store; give it as a string, not a Nix path.";
        })
        [
          {
            name = "repositoryFile";
            value = cfg.repositoryFile;
          }
          {
            name = "passwordFile";
            value = cfg.passwordFile;
          }
          {
            name = "environmentFile";
            value = cfg.environmentFile;
          }
        ]
      ++ [
        {
          assertion = cfg.n8n -> fe.n8n.enable;
          message = "llmvisor.backup.n8n: n8n's database is the one llmvisor.frontends.n8n sets up; enable it, or back up your own with llmvisor.backup.paths.";
        }
        {
          assertion = cfg.qdrant -> config.services.qdrant.enable;
          message = "llmvisor.backup.qdrant: services.qdrant is not enabled.";
        }
      ];

    services.restic.backups.llmvisor = {
      inherit (cfg)
        repositoryFile
        passwordFile
        environmentFile
        initialize
        timerConfig
        pruneOpts
        ;
      paths = [
        staging
      ]
      ++ lib.optional cfg.openWebui openWebuiDir
      ++ lib.optional cfg.n8n n8nDir
      ++ cfg.paths;
      # The live databases are in the staging directory as consistent copies.
      exclude = lib.optionals cfg.openWebui [
        "${openWebuiDir}/webui.db"
        "${openWebuiDir}/webui.db-*"
        "${openWebuiDir}/cache"
      ];
      backupPrepareCommand = prepare;
    };

    systemd.services.restic-backups-llmvisor = {
      # Copies before the services they read: the dump needs PostgreSQL, the
      # snapshots Qdrant.
      after =
        lib.optionals cfg.n8n [
          "postgresql.service"
          # nixos-25.11 makes the database there (ensureDatabases).
          "postgresql-setup.service"
        ]
        ++ lib.optional cfg.qdrant "qdrant.service"
        ++ lib.optional cfg.usageStore "llmvisor.service";
    };

    environment.systemPackages = [ restore ];
  };
}
