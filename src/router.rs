//! Choosing the model instance for a requested name. Today a public name is an
//! instance name or one of its aliases; routes with rules build on this.

use std::collections::HashMap;

use crate::config::Settings;

/// Public model names and the instance each one reaches.
#[derive(Clone, Debug, Default)]
pub struct Router {
    names: HashMap<String, String>,
    listing: Vec<PublicName>,
}

/// One name clients can ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicName {
    /// The name.
    pub name: String,
    /// The instance it reaches.
    pub instance: String,
    /// Whether it is an alias (not the instance's own name).
    pub alias: bool,
}

impl Router {
    /// Build the table from a validated configuration (names are unique there).
    pub fn new(settings: &Settings) -> Self {
        let mut listing = Vec::new();
        for m in &settings.models {
            listing.push(PublicName {
                name: m.name.clone(),
                instance: m.name.clone(),
                alias: false,
            });
            for a in &m.aliases {
                listing.push(PublicName {
                    name: a.clone(),
                    instance: m.name.clone(),
                    alias: true,
                });
            }
        }
        let names = listing
            .iter()
            .map(|p| (p.name.clone(), p.instance.clone()))
            .collect();
        Self { names, listing }
    }

    /// The instance serving `model`, if any.
    pub fn resolve(&self, model: &str) -> Option<&str> {
        self.names.get(model).map(String::as_str)
    }

    /// Every public name, instances first in configuration order, each followed by
    /// its aliases.
    pub fn public_names(&self) -> &[PublicName] {
        &self.listing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn names_and_aliases_resolve() {
        let s = Config::parse_open(
            "[models.big]\nkind = \"command\"\ncommand = [\"x\"]\naliases = [\"gpt-4o\", \"default\"]\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        let r = Router::new(&s);
        assert_eq!(r.resolve("big"), Some("big"));
        assert_eq!(r.resolve("gpt-4o"), Some("big"));
        assert_eq!(r.resolve("nope"), None);
        assert_eq!(r.public_names().len(), 3);
        assert!(r.public_names()[1].alias);
    }
}
