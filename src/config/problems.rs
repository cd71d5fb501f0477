//! What a configuration check finds: [`Problem`]s with their key paths, collected
//! by every section's validator, and the rule for instance names that several
//! sections share. The validators (`validate`, `routing`, `gpu`) depend on this
//! module, never on each other's internals.

use std::fmt;

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `models.llama.port`.
    pub path: String,
    /// What is wrong, and where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Longest instance name: a unit name is at most 255 bytes, and ours is
/// `llmvisor-model-<name>.service`.
const MAX_NAME: usize = 255 - "llmvisor-model-".len() - ".service".len();

#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Whether `name` can be an instance name: it becomes part of a systemd unit name
/// and a public model name, so only `[A-Za-z0-9._:-]`, starting with a letter or
/// digit.
pub fn valid_instance_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!("the name is longer than {MAX_NAME} characters"));
    }
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err("the name must start with a letter or digit".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(format!(
            "`{c}` is not allowed in a systemd unit name; use letters, digits, `.`, `_`, `-`, `:`"
        ));
    }
    Ok(())
}

/// What every section's check shares: the whole configuration, the problems found
/// so far, and what earlier sections resolved (listeners, public names, models).
pub(crate) struct Ctx<'a> {
    /// The configuration as parsed.
    pub(crate) config: &'a super::Config,
    /// Every problem found so far.
    pub(crate) problems: Problems,
    /// `[server] listen`, parsed (the server section).
    pub(crate) listen: Vec<std::net::SocketAddr>,
    /// Public names (instance names and aliases) → what owns them.
    pub(crate) public: std::collections::HashMap<&'a str, String>,
    /// Models that passed their own checks (the models section).
    pub(crate) models: Vec<super::ModelSpec>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(config: &'a super::Config) -> Self {
        Self {
            config,
            problems: Problems::default(),
            listen: Vec::new(),
            public: std::collections::HashMap::new(),
            models: Vec::new(),
        }
    }
}
