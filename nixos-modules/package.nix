# The llmvisor package: both binaries (`llmvisor` and the mock backend
# `llmvisor-mock`, which the VM tests use in place of vLLM).
{
  lib,
  rustPlatform,
  pkg-config,
  systemd,
}:
let
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "llmvisor";
  inherit (cargoToml.package) version;

  # Only what cargo reads, so editing a module or a doc page does not rebuild.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../tests
      ../bench/streamload.rs
      ../examples
      ../docs/llmvisor.service
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ pkg-config ];
  # libsystemd, for the journal reader (the `systemd` crate).
  buildInputs = [ systemd ];

  # Unit and integration tests run in the build: they need only loopback, which the
  # sandbox has. The tests that need real systemd (system_systemd) or the Python
  # `openai` client (real_clients) say SKIPPED there, as they do without CI=true.
  doCheck = true;

  meta = {
    description = cargoToml.package.description;
    license = lib.licenses.asl20;
    mainProgram = "llmvisor";
    platforms = lib.platforms.linux;
  };
}
