//! TSIG keys for DNS UPDATE (`dns.update.keys_file`, RFC 8945): who may change our
//! zones through DNS, and which services each key may touch (the same patterns as the
//! registration socket's tokens).
//!
//! The file is a YAML list, with secrets as `tsig-keygen` prints them:
//! ```yaml
//! - name: web-key              # the key's name, as the client signs with it
//!   algorithm: hmac-sha256     # hmac-sha256, hmac-sha384 or hmac-sha512
//!   secret: "Ly0y+VtSJ17dXR8aErXiONoocf7n2l6uDkMvE7Rk5tE="
//!   services: ["web", "web-*"]
//! ```
//! MACs are computed and compared by hickory-proto (with ring).

use std::path::Path;

use data_encoding::BASE64;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{Name, TSigner};
use serde::Deserialize;

use crate::api::auth::Grant;
use crate::config::{read_yaml_list, ConfigError};

/// Seconds a signature's time may differ from ours (RFC 8945 §5.2.3 recommends 300).
const FUDGE: u16 = 300;
/// Shortest secret accepted: RFC 8945 §6 asks for at least half the hash's length,
/// and 16 bytes keep guessing out of reach for every algorithm we take.
const MIN_SECRET_BYTES: usize = 16;

/// The keys of a keys file.
pub struct UpdateKeys {
    keys: Vec<UpdateKey>,
}

/// One key: how to check a signature made with it, and what it may change.
pub struct UpdateKey {
    pub signer: TSigner,
    pub grant: Grant,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    name: String,
    algorithm: String,
    secret: String,
    services: Vec<String>,
}

impl UpdateKeys {
    /// Reads and checks a keys file; errors name the file and the entry.
    pub fn load(path: &Path) -> Result<UpdateKeys, ConfigError> {
        let entries: Vec<KeyFile> = read_yaml_list(
            path,
            "no keys: every update would be refused; list at least one {name, algorithm, secret, services}",
        )?;
        let mut keys: Vec<UpdateKey> = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            let at = |message: String| {
                ConfigError::in_file(
                    path,
                    format!("entry {} ({}): {message}", index + 1, entry.name),
                )
            };
            let mut name = Name::from_ascii(&entry.name)
                .map_err(|e| at(format!("name is not a DNS name: {e}")))?;
            // `web-key` and `web-key.` are one key, as in BIND's and Knot's files.
            name.set_fqdn(true);
            if keys.iter().any(|key| *key.signer.signer_name() == name) {
                return Err(at("another entry has the same name".into()));
            }
            let algorithm = match entry.algorithm.to_ascii_lowercase().as_str() {
                "hmac-sha256" => TsigAlgorithm::HmacSha256,
                "hmac-sha384" => TsigAlgorithm::HmacSha384,
                "hmac-sha512" => TsigAlgorithm::HmacSha512,
                other => {
                    return Err(at(format!(
                        "algorithm {other:?} is not one of hmac-sha256, hmac-sha384, hmac-sha512"
                    )))
                }
            };
            let secret = BASE64
                .decode(entry.secret.trim().as_bytes())
                .map_err(|e| at(format!("secret is not base64: {e}")))?;
            if secret.len() < MIN_SECRET_BYTES {
                return Err(at(format!(
                    "secret is {} bytes; at least {MIN_SECRET_BYTES} are needed (tsig-keygen makes 32)",
                    secret.len()
                )));
            }
            let grant = Grant::parse(&entry.services).map_err(at)?;
            let signer = TSigner::new(secret, algorithm, name, FUDGE)
                .map_err(|e| at(format!("cannot use this key: {e}")))?;
            keys.push(UpdateKey { signer, grant });
        }
        Ok(UpdateKeys { keys })
    }

    /// The key named `name` (compared as DNS names are, without regard to case).
    pub fn find(&self, name: &Name) -> Option<&UpdateKey> {
        self.keys
            .iter()
            .find(|key| key.signer.signer_name() == name)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `nsupdate -y hmac-sha256:upd-key:SECRET` request (BIND 9.18), adding a
    /// record to `example.test`, and its key.
    const NSUPDATE_REQUEST: &[u8] =
        include_bytes!("../../../tests/data/nsupdate_signed_update.bin");
    const NSUPDATE_SECRET: &str = "Ly0y+VtSJ17dXR8aErXiONoocf7n2l6uDkMvE7Rk5tE=";

    fn load(text: &str) -> Result<UpdateKeys, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        std::fs::write(&path, text).unwrap();
        UpdateKeys::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn a_request_signed_by_nsupdate_verifies_with_its_key_and_not_another() {
        let keys = load(&format!(
            "- {{name: upd-key, algorithm: hmac-sha256, secret: \"{NSUPDATE_SECRET}\", services: [\"*\"]}}\n\
             - {{name: other-key, algorithm: hmac-sha256, secret: \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\", services: [web]}}\n"
        ))
        .unwrap();
        assert_eq!(keys.len(), 2);
        let key = keys
            .find(&Name::from_ascii("UPD-KEY.").unwrap())
            .expect("found by name, in any case");
        let (_, signed_at, _) = key
            .signer
            .verify_message_byte(NSUPDATE_REQUEST, None, true)
            .expect("nsupdate's MAC checks out");
        assert!(signed_at > 1_700_000_000, "signed at {signed_at}");
        assert!(key.grant.allows("anything"));
        let other = keys.find(&Name::from_ascii("other-key.").unwrap()).unwrap();
        assert!(other
            .signer
            .verify_message_byte(NSUPDATE_REQUEST, None, true)
            .is_err());
        // The same key name with another secret fails the MAC.
        let wrong = load(
            "- {name: upd-key, algorithm: hmac-sha256, secret: \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\", services: [web]}\n",
        )
        .unwrap();
        let wrong = wrong.find(&Name::from_ascii("upd-key.").unwrap()).unwrap();
        assert!(wrong
            .signer
            .verify_message_byte(NSUPDATE_REQUEST, None, true)
            .is_err());
    }

    #[test]
    fn bad_keys_files_are_refused_with_the_reason() {
        let secret = NSUPDATE_SECRET;
        let cases = [
            ("", "no keys".to_string()),
            (
                "- {name: k, algorithm: hmac-md5, secret: \"SECRET\", services: [web]}\n",
                "hmac-md5".to_string(),
            ),
            (
                "- {name: k, algorithm: hmac-sha256, secret: \"not base64!\", services: [web]}\n",
                "not base64".to_string(),
            ),
            (
                "- {name: k, algorithm: hmac-sha256, secret: \"c2hvcnQ=\", services: [web]}\n",
                "at least 16".to_string(),
            ),
            (
                "- {name: k, algorithm: hmac-sha256, secret: \"SECRET\", services: []}\n",
                "services is empty".to_string(),
            ),
            (
                "- {name: k, algorithm: hmac-sha256, secret: \"SECRET\", services: [web]}\n- {name: K., algorithm: hmac-sha512, secret: \"SECRET\", services: [db]}\n",
                "same name".to_string(),
            ),
            (
                "- {name: k, algorithm: hmac-sha256, secret: \"SECRET\", service: [web]}\n",
                "unknown field".to_string(),
            ),
        ];
        for (text, expected) in cases {
            let text = text.replace("SECRET", secret);
            let error = match load(&text) {
                Ok(_) => panic!("{text:?} was taken"),
                Err(error) => error,
            };
            assert!(
                error.contains("keys.yaml") && error.contains(&expected),
                "{text:?}: {error}"
            );
        }
    }
}
