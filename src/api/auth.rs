//! Who may write (`registration.tokens_file`, DESIGN §2): with tokens configured, a
//! connection's first request is `{"op":"auth","token":"…"}`, and a token may be held
//! to service-name patterns, so a sidecar can only write its own service.
//!
//! The file is a YAML list:
//! ```yaml
//! - token: "b7c1…"            # at least 16 characters
//!   services: ["web", "web-*"]
//! - token: "9f0e…"
//!   services: ["*"]           # every service
//! ```
//! Tokens are compared in constant time, against every entry, so neither the time
//! nor the order of entries says how much of a guess was right.
//!
//! SIGHUP reads the file again ([`LiveTokens`]): a connection's token is checked
//! against the new file at its next request, so a withdrawn token stops writing at
//! once, without a restart.

use std::path::Path;

use arc_swap::ArcSwap;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::{read_yaml_list, ConfigError};

/// Shortest token accepted: shorter ones can be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// The tokens in force: replaced whole when the file is read again.
pub type LiveTokens = ArcSwap<Tokens>;

/// The tokens of a tokens file.
#[derive(Debug)]
pub struct Tokens {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    token: Vec<u8>,
    grant: Grant,
}

/// What an authenticated connection may write: services matching one of its patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    patterns: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    token: String,
    services: Vec<String>,
}

impl Tokens {
    /// Reads and checks a tokens file; errors name the file and, where known, the line.
    pub fn load(path: &Path) -> Result<Tokens, ConfigError> {
        let entries: Vec<EntryFile> = read_yaml_list(
            path,
            "no tokens: every registration would be refused; list at least one {token, services}",
        )?;
        let mut checked = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            let at = |message: String| {
                ConfigError::in_file(path, format!("entry {}: {message}", index + 1))
            };
            if entry.token.len() < MIN_TOKEN_LEN {
                return Err(at(format!(
                    "token is {} characters; at least {MIN_TOKEN_LEN} are needed",
                    entry.token.len()
                )));
            }
            let grant = Grant::parse(&entry.services).map_err(at)?;
            checked.push(Entry {
                token: entry.token.into_bytes(),
                grant,
            });
        }
        Ok(Tokens { entries: checked })
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The grant of `token`, if it is one of ours. Every entry is compared, each in
    /// constant time.
    pub fn check(&self, token: &str) -> Option<Grant> {
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.token.ct_eq(token.as_bytes())) {
                found = Some(entry.grant.clone());
            }
        }
        found
    }
}

impl Grant {
    /// The grant of a list of service names and patterns (with `*`), as a tokens or
    /// keys file gives them; why not, when a pattern cannot name a service.
    pub fn parse(patterns: &[String]) -> Result<Grant, String> {
        if patterns.is_empty() {
            return Err("services is empty: it could write nothing".into());
        }
        for pattern in patterns {
            let valid = !pattern.is_empty()
                && pattern
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*');
            if !valid {
                return Err(format!(
                    "service pattern {pattern:?} may hold only letters, digits, '-' and '*'"
                ));
            }
        }
        Ok(Grant {
            patterns: patterns.iter().map(|p| p.to_ascii_lowercase()).collect(),
        })
    }

    /// Whether the grant covers service `service`.
    pub fn allows(&self, service: &str) -> bool {
        let service = service.to_ascii_lowercase();
        self.patterns
            .iter()
            .any(|pattern| matches_glob(pattern.as_bytes(), service.as_bytes()))
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// `*` matches any run of characters, everything else itself.
fn matches_glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| matches_glob(rest, &text[skip..])),
        Some((first, rest)) => text
            .split_first()
            .is_some_and(|(c, tail)| c == first && matches_glob(rest, tail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names() {
        let grant = Grant {
            patterns: vec!["web".into(), "api-*".into(), "*-worker".into()],
        };
        for allowed in ["web", "WEB", "api-", "api-v2", "batch-worker"] {
            assert!(grant.allows(allowed), "{allowed}");
        }
        for refused in ["web2", "xweb", "api", "worker", "db"] {
            assert!(!grant.allows(refused), "{refused}");
        }
        let everything = Grant {
            patterns: vec!["*".into()],
        };
        assert!(everything.allows("anything-at-all"));
    }

    #[test]
    fn bad_token_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("", "no tokens"),
            ("- {token: short, services: [web]}\n", "at least 16"),
            (
                "- {token: 0123456789abcdef, services: []}\n",
                "services is empty",
            ),
            (
                "- {token: 0123456789abcdef, services: [\"w_b\"]}\n",
                "pattern",
            ),
            (
                "- {token: 0123456789abcdef, service: [web]}\n",
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let path = dir.path().join("tokens.yaml");
            std::fs::write(&path, text).unwrap();
            let error = Tokens::load(&path).unwrap_err().to_string();
            assert!(
                error.contains("tokens.yaml") && error.contains(expected),
                "{text:?}: {error}"
            );
        }
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, "- {token: 0123456789abcdef, services: [web]}\n").unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert!(tokens.check("0123456789abcdef").is_some());
        assert!(tokens.check("0123456789abcdeF").is_none());
        assert!(tokens.check("0123456789abcde").is_none());
    }
}
