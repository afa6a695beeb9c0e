//! `[[federation]]` tables: the external issuers trusted and what their tokens must say.
//!
//! ```toml
//! [[federation]]
//! name = "github"
//! profile = "github"
//! issuer = "https://token.actions.githubusercontent.com"
//! audience = "https://idp.example.ts.net"
//! subject = "repo:octo-org/*:ref:refs/heads/main"
//! claims = { repository = "octo-org/*", job_workflow_ref = "octo-org/infra/.github/workflows/deploy.yml@*" }
//! ```
//! A token matches a table when its issuer is the table's (exactly), its audience holds the
//! table's, `subject` matches `sub` and every `claims` pattern matches its claim, a string or
//! number claim read as text; a claim that is absent, or neither, matches no pattern.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};
use tailpass_verify::glob;
use url::Url;

use super::profile::Profile;

/// One `[[federation]]` table, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationTable {
    /// The table's name: `fed:<name>` in rules, `--fed <name>` on the command line.
    pub name: String,
    /// The issuer (`iss`), compared exactly.
    pub issuer: String,
    /// The audience its tokens must carry for tailpass.
    pub audience: String,
    /// Where its keys are; otherwise found by the issuer's discovery document, and then only
    /// on the issuer's own host.
    #[serde(default)]
    pub jwks_uri: Option<Url>,
    /// Which platform: its claims, run labels and reuse default.
    #[serde(default)]
    pub profile: Profile,
    /// A glob over `sub` (`*` to accept any subject, said explicitly).
    pub subject: String,
    /// Claim name → glob; every one must match.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// A CA bundle (PEM) for an issuer with a private CA, e.g. a Kubernetes API server.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Whether one external token is traded once only [default: by profile].
    #[serde(default)]
    pub single_use: Option<bool>,
}

/// Why a table was refused at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[[federation]] {table:?}: {message}")]
pub struct TableError {
    /// The table's name.
    pub table: String,
    /// What is wrong.
    pub message: String,
}

/// Whether `url` may be fetched for keys: https, or http to a loopback address (an issuer
/// running beside tailpass, such as a test double).
pub fn fetchable(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name == "localhost",
            None => false,
        },
        _ => false,
    }
}

impl FederationTable {
    /// Checks one table: a plain name, an issuer URL it may fetch from, an audience, a
    /// `jwks_uri` it may fetch from.
    pub fn check(&self) -> Result<(), TableError> {
        let bad = |message: String| TableError {
            table: self.name.clone(),
            message,
        };
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !name_ok {
            return Err(bad("a name is letters, digits, '-' and '_'".into()));
        }
        let issuer = Url::parse(&self.issuer).map_err(|e| bad(format!("issuer: {e}")))?;
        if !fetchable(&issuer) {
            return Err(bad(
                "issuer must be https (http only on loopback, for an issuer beside tailpass)"
                    .into(),
            ));
        }
        if self.audience.is_empty() {
            return Err(bad("audience is required".into()));
        }
        if let Some(jwks) = &self.jwks_uri
            && !fetchable(jwks)
        {
            return Err(bad("jwks_uri must be https".into()));
        }
        if self.subject.is_empty() {
            return Err(bad("subject is required (\"*\" for any)".into()));
        }
        Ok(())
    }

    /// Whether one external token is traded once only.
    pub fn single_use(&self) -> bool {
        self.single_use.unwrap_or_else(|| self.profile.single_use())
    }

    /// Whether a token with subject `sub` and `claims` (issuer and audience already checked)
    /// matches every pattern of this table; the first that does not, otherwise.
    pub fn mismatch(&self, sub: &str, claims: &Map<String, Value>) -> Option<String> {
        if !glob::matches(&self.subject, sub) {
            return Some("sub".to_owned());
        }
        self.claims
            .iter()
            .find(|(name, pattern)| {
                let text = match claims.get(name.as_str()) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Bool(b)) => b.to_string(),
                    _ => return true,
                };
                !glob::matches(pattern, &text)
            })
            .map(|(name, _)| name.clone())
    }
}

/// Checks a policy file's tables: each valid, names unique.
pub fn check_all(tables: &[FederationTable]) -> Result<(), TableError> {
    let mut names = std::collections::BTreeSet::new();
    for table in tables {
        table.check()?;
        if !names.insert(table.name.as_str()) {
            return Err(TableError {
                table: table.name.clone(),
                message: "the name is used twice".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn github() -> FederationTable {
        toml::from_str(
            r#"
            name = "github"
            profile = "github"
            issuer = "https://token.actions.githubusercontent.com"
            audience = "https://idp.example.ts.net"
            subject = "repo:octo-org/*"
            claims = { repository = "octo-org/*", run_attempt = "1", job_workflow_ref = "octo-org/infra/.github/workflows/deploy.yml@refs/heads/main" }
            "#,
        )
        .unwrap()
    }

    #[test]
    fn a_token_matches_only_when_every_pattern_does() {
        let table = github();
        assert!(table.check().is_ok());
        assert!(table.single_use());
        let claims = json!({
            "repository": "octo-org/octo-repo",
            "run_attempt": "1",
            "job_workflow_ref": "octo-org/infra/.github/workflows/deploy.yml@refs/heads/main",
        });
        let claims = claims.as_object().unwrap();
        assert_eq!(
            table.mismatch("repo:octo-org/octo-repo:ref:refs/heads/main", claims),
            None
        );
        assert_eq!(
            table.mismatch("repo:evil-org/octo-repo:ref:refs/heads/main", claims),
            Some("sub".into())
        );
        let mut other = claims.clone();
        other.insert("repository".into(), json!("evil-org/x"));
        assert_eq!(
            table.mismatch("repo:octo-org/x", &other),
            Some("repository".into())
        );
        let mut numeric = claims.clone();
        numeric.insert("run_attempt".into(), json!(1));
        assert_eq!(table.mismatch("repo:octo-org/x", &numeric), None);
        let mut missing = claims.clone();
        missing.remove("job_workflow_ref");
        assert_eq!(
            table.mismatch("repo:octo-org/x", &missing),
            Some("job_workflow_ref".into())
        );
    }

    #[test]
    fn tables_are_checked_at_load() {
        let mut twice = vec![github(), github()];
        assert!(check_all(&twice).unwrap_err().message.contains("twice"));
        twice[1].name = "gh2".into();
        assert!(check_all(&twice).is_ok());
        for (edit, error) in [
            (
                (|t: &mut FederationTable| t.issuer = "http://token.example".into())
                    as fn(&mut FederationTable),
                "https",
            ),
            (|t| t.name = "a b".into(), "letters"),
            (|t| t.subject = String::new(), "subject"),
            (|t| t.audience = String::new(), "audience"),
            (
                |t| t.jwks_uri = Some(Url::parse("http://keys.example/jwks").unwrap()),
                "jwks_uri",
            ),
        ] {
            let mut table = github();
            edit(&mut table);
            let err = table.check().unwrap_err();
            assert!(err.message.contains(error), "{err}");
        }
        let mut local = github();
        local.issuer = "http://127.0.0.1:9000".into();
        assert!(local.check().is_ok(), "a loopback issuer may be http");
        let unknown = toml::from_str::<FederationTable>(
            "name = \"x\"\nissuer = \"https://i\"\naudience = \"a\"\nsubject = \"*\"\nwhat = 1",
        );
        assert!(unknown.is_err());
    }
}
