//! Which redirect URIs a client may register.
//!
//! A redirect URI is where an authorization code is delivered, so registering one is
//! registering a place to receive someone's login. Allowed: `https` URIs; `http` only to a
//! loopback host (native apps, RFC 8252 §7.3) unless the operator allows plain `http`;
//! private-use schemes in reverse-domain form such as `com.example.app:/cb` (RFC 8252 §7.1).
//! Everything else — `javascript:`, `data:`, `file:`, bare words — is refused, as are
//! fragments (RFC 6749 §3.1.2) and embedded credentials. At use, matching is exact and
//! case-sensitive against the string registered, never against a normalized form.

use std::net::IpAddr;

use url::{Host, Url};

/// The longest redirect URI accepted.
const MAX_LEN: usize = 2_000;

/// What the operator allows beyond the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedirectRules {
    /// Accept `http:` URIs to non-loopback hosts (a tailnet-only app without TLS).
    pub allow_http: bool,
}

/// Checks one URI, returning why it is refused.
pub fn check(uri: &str, rules: RedirectRules) -> Result<(), String> {
    if uri.len() > MAX_LEN {
        return Err(format!("longer than {MAX_LEN} characters"));
    }
    // The URL parser silently drops tabs and newlines and trims spaces, so a URI carrying
    // them would pass the checks below as another string than the one stored and matched.
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{uri:?} contains a space, tab or control character"
        ));
    }
    let parsed = Url::parse(uri).map_err(|e| format!("{uri:?} is not an absolute URI: {e}"))?;
    if parsed.fragment().is_some() {
        return Err(format!("{uri:?} has a fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{uri:?} embeds credentials"));
    }
    match parsed.scheme() {
        "https" => {
            if parsed.host().is_none() {
                return Err(format!("{uri:?} has no host"));
            }
            Ok(())
        }
        "http" => match parsed.host() {
            Some(host) if is_loopback(&host) || rules.allow_http => Ok(()),
            Some(_) => Err(format!(
                "{uri:?} uses http to a non-loopback host (use https, or allow http redirect URIs in the configuration)"
            )),
            None => Err(format!("{uri:?} has no host")),
        },
        scheme if scheme.contains('.') => Ok(()),
        scheme => Err(format!(
            "scheme {scheme:?} is not allowed (https, http to loopback, or a reverse-domain app scheme such as com.example.app)"
        )),
    }
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted() {
        let rules = RedirectRules::default();
        for ok in [
            "https://grafana.tail1234.ts.net/login/generic_oauth",
            "https://app.example.com/cb?tenant=a",
            "http://127.0.0.1:8080/cb",
            "http://localhost/cb",
            "http://[::1]:9000/cb",
            "com.example.app:/oauth2redirect",
            "com.example.app://callback",
        ] {
            assert_eq!(check(ok, rules), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refused() {
        let rules = RedirectRules::default();
        for bad in [
            "javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "file:///etc/passwd",
            "vbscript:msgbox",
            "myapp://cb",
            "/relative/path",
            "https://app.example.com/cb#frag",
            "https://user:pass@app.example.com/cb",
            "http://grafana.tail1234.ts.net/cb",
            "",
        ] {
            assert!(check(bad, rules).is_err(), "{bad} must be refused");
        }
        let long = format!("https://a.example/{}", "x".repeat(MAX_LEN));
        assert!(check(&long, rules).is_err());
    }

    #[test]
    fn a_redirect_uri_with_whitespace_or_control_characters_is_refused() {
        let rules = RedirectRules::default();
        for bad in [
            "https://app.example/c b",
            "https://app.example/cb ",
            " https://app.example/cb",
            "https://app.exa\tmple/cb",
            "https://app.example/cb\n",
            "https://app.example/\rcb",
            "https://app.example/cb\u{0}",
            "https://app.example/cb\u{7f}",
            "https://app.example/cb\u{85}",
            "https://app.example/cb\u{a0}",
        ] {
            let reason = check(bad, rules).expect_err(bad);
            assert!(reason.contains("control character"), "{bad:?}: {reason}");
        }
    }

    #[test]
    fn plain_http_only_when_allowed() {
        let uri = "http://grafana.internal/cb";
        assert!(check(uri, RedirectRules::default()).is_err());
        assert_eq!(check(uri, RedirectRules { allow_http: true }), Ok(()));
    }
}
