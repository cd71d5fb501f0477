# The llmvisor package: both binaries (`llmvisor` and the mock backend
# `llmvisor-mock`, which the VM tests use in place of vLLM).
{
  lib,
  rustPlatform,
  pkg-config,
  systemd,
  openssl,
}:
let
  cargoToml = lib.importTOML ../Cargo.toml;

  # Only what cargo and the tests read, so editing a module or a doc page does not
  # rebuild. tests/nix-eval checks it against the files the tests open.
  fileset = lib.fileset.unions [
    ../Cargo.toml
    ../Cargo.lock
    ../src
    # The NixOS tests and their evaluation are not cargo's.
    (lib.fileset.difference ../tests (
      lib.fileset.unions [
        ../tests/nixos
        ../tests/nix-eval
      ]
    ))
    ../bench/streamload.rs
    ../examples
    ../docs/llmvisor.service
    # tests/usage.rs checks that the dashboard queries only exported metrics.
    ../nixos-modules/grafana/llmvisor-dashboard.json
  ];
in
rustPlatform.buildRustPackage {
  pname = "llmvisor";
  inherit (cargoToml.package) version;

  src = lib.fileset.toSource {
    root = ../.;
    inherit fileset;
  };
  passthru.srcFileset = fileset;

  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ pkg-config ];
  # libsystemd, for the journal reader (the `systemd` crate).
  buildInputs = [ systemd ];

  # Unit and integration tests run in the build: they need only loopback, which the
  # sandbox has. The tests that need real systemd (system_systemd) or the Python
  # `openai` client (real_clients) say SKIPPED there, as they do without CI=true.
  doCheck = true;
  # The `openssl` command: the tests make their own certificate authority and a
  # collector's certificate with it (src/config/validate.rs, tests/tracing.rs).
  nativeCheckInputs = [ (lib.getBin openssl) ];

  meta = {
    description = cargoToml.package.description;
    license = lib.licenses.asl20;
    mainProgram = "llmvisor";
    platforms = lib.platforms.linux;
  };
}
