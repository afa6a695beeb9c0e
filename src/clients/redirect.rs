//! Which redirect URIs a client may register.
//!
//! A redirect URI is where an authorization code is delivered, so registering one is
//! registering a place to receive someone's login. Allowed: `https` URIs; `http` only to a
//! loopback host (native apps, RFC 8252 §7.3) unless the operator allows plain `http`;
//! private-use schemes in reverse-domain form such as `com.example.app:/cb` (RFC 8252 §7.1).
//! Everything else — `javascript:`, `data:`, `file:`, bare words — is refused, as are
//! fragments (RFC 6749 §3.1.2), embedded credentials, whitespace and control characters. At
//! use, matching is exact and case-sensitive against the string registered, never against a
//! normalized form ([`matches`]); the one exception is the port of a public client's
//! loopback `http` URI, which a native app chooses at run time (RFC 8252 §7.3).

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

/// The loopback hosts whose port a native app picks at run time (RFC 8252 §7.3).
const LOOPBACK_HOSTS: [&str; 3] = ["127.0.0.1", "[::1]", "localhost"];

/// Whether `requested` may be used as the registered redirect URI `registered`: the same
/// string, exactly and case-sensitively; or, when `any_loopback_port` (public clients, which
/// are native apps listening on an ephemeral port, RFC 8252 §7.3), an `http` URI to
/// `127.0.0.1`, `[::1]` or `localhost` that is the same string but for the port. Never a
/// normalized comparison: a URI that differs anywhere else does not match.
pub fn matches(registered: &str, requested: &str, any_loopback_port: bool) -> bool {
    if registered == requested {
        return true;
    }
    any_loopback_port
        && match (
            without_loopback_port(registered),
            without_loopback_port(requested),
        ) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
}

/// `uri` without its port, when it is `http://` to a loopback host with at most a port an app
/// can listen on (1 to 65535, in digits); `None` for every other URI. A larger number is no
/// port: the URI is not a URL, and a code sent there could not be delivered.
fn without_loopback_port(uri: &str) -> Option<(&'static str, &str)> {
    let rest = uri.strip_prefix("http://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    LOOPBACK_HOSTS.into_iter().find_map(|host| {
        let port = authority.strip_prefix(host)?;
        let numeric = match port.strip_prefix(':') {
            Some(digits) => {
                (1..=5).contains(&digits.len())
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && digits.parse::<u16>().is_ok_and(|p| p > 0)
            }
            None => port.is_empty(),
        };
        numeric.then_some((host, tail))
    })
}

/// Whether `ip` is an address a self-registered client must never make this server call:
/// loopback, unspecified, broadcast, link-local (which holds the cloud metadata services at
/// 169.254.169.254), AWS's IPv6 metadata address `fd00:ec2::254`, Alibaba's
/// `100.100.100.200`, and the IPv4-mapped forms of all of them.
pub fn is_internal_ip(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_link_local()
                || v4 == std::net::Ipv4Addr::new(100, 100, 100, 200)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

/// Whether `host` names this machine or a cloud metadata service, by address or by a name
/// that always means one (`localhost`, `*.localhost`, the metadata services' names).
pub fn is_internal_host(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost"
                || name.ends_with(".localhost")
                || name == "metadata.google.internal"
                || name == "instance-data"
                || name == "instance-data.ec2.internal"
        }
        Host::Ipv4(ip) => is_internal_ip(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => is_internal_ip(IpAddr::V6(*ip)),
    }
}

/// Checks a back-channel logout URI of a self-registered client: `https`, on the host of one
/// of its `redirect_uris`, and never an internal host ([`is_internal_host`]). The server
/// POSTs to this URI on its own initiative, so an open choice would let any registrant make
/// it call internal services. Operators (the CLI, the admin API, the configuration file)
/// may register others.
pub fn check_dynamic_backchannel(uri: &str, redirect_uris: &[String]) -> Result<(), String> {
    let parsed = Url::parse(uri).map_err(|e| format!("{uri:?} is not an absolute URI: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("{uri:?} must use https"));
    }
    let Some(host) = parsed.host() else {
        return Err(format!("{uri:?} has no host"));
    };
    if is_internal_host(&host) {
        return Err(format!(
            "{uri:?} points at a loopback, link-local or metadata address"
        ));
    }
    let on_a_redirect_host = redirect_uris
        .iter()
        .filter_map(|r| Url::parse(r).ok())
        .any(|r| r.host() == Some(host.clone()));
    if !on_a_redirect_host {
        return Err(format!(
            "{uri:?} must be on the host of one of the client's redirect_uris"
        ));
    }
    Ok(())
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
    fn a_self_registered_backchannel_uri_is_https_on_a_redirect_host_and_never_internal() {
        let redirects = vec![
            "https://app.example/cb".to_owned(),
            "http://127.0.0.1:9/cb".to_owned(),
            "https://[::ffff:169.254.169.254]/cb".to_owned(),
        ];
        assert_eq!(
            check_dynamic_backchannel("https://app.example/logout", &redirects),
            Ok(())
        );
        assert_eq!(
            check_dynamic_backchannel("https://APP.example:8443/logout", &redirects),
            Ok(()),
            "hosts compare as parsed; the port may differ"
        );
        for (bad, needle) in [
            ("http://app.example/logout", "https"),
            ("https://other.example/logout", "redirect_uris"),
            ("https://127.0.0.1:9/logout", "loopback"),
            ("https://127.1.2.3/logout", "loopback"),
            ("https://localhost/logout", "loopback"),
            ("https://a.localhost./logout", "loopback"),
            ("https://169.254.169.254/latest/meta-data/", "metadata"),
            ("https://[::ffff:169.254.169.254]/cb", "metadata"),
            ("https://[fd00:ec2::254]/", "metadata"),
            ("https://[fe80::1]/", "link-local"),
            ("https://[::1]/", "loopback"),
            ("https://0.0.0.0/", "loopback"),
            ("https://100.100.100.200/", "metadata"),
            ("https://metadata.google.internal/", "metadata"),
            ("not a uri", "absolute"),
        ] {
            let reason = check_dynamic_backchannel(bad, &redirects).expect_err(bad);
            assert!(reason.contains(needle), "{bad}: {reason}");
        }
        assert!(
            !is_internal_ip("100.64.0.1".parse().unwrap()),
            "tailnet peers are fine"
        );
        assert!(!is_internal_ip("fd7a:115c:a1e0::1".parse().unwrap()));
    }

    #[test]
    fn loopback_redirect_uris_of_public_clients_match_any_port() {
        for (registered, requested) in [
            ("http://127.0.0.1/cb", "http://127.0.0.1:51234/cb"),
            ("http://127.0.0.1:9/cb", "http://127.0.0.1:51234/cb"),
            ("http://127.0.0.1:9/cb?x=1", "http://127.0.0.1/cb?x=1"),
            ("http://[::1]/cb", "http://[::1]:8080/cb"),
            ("http://localhost/", "http://localhost:3000/"),
            ("http://localhost", "http://localhost:3000"),
        ] {
            assert!(matches(registered, requested, true), "{requested}");
            assert!(
                !matches(registered, requested, false),
                "confidential: {requested}"
            );
        }
        for (registered, requested) in [
            ("http://127.0.0.1/cb", "http://127.0.0.1:5/cb/"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:5/CB"),
            ("http://127.0.0.1/cb", "http://127.0.0.2:5/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1.evil.example:5/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:5@evil.example/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:123456/cb"),
            ("http://127.0.0.1/cb", "https://127.0.0.1:5/cb"),
            ("http://localhost/cb", "http://LOCALHOST:5/cb"),
            ("http://localhost/cb", "http://127.0.0.1:5/cb"),
            ("https://app.example/cb", "https://app.example:444/cb"),
            (
                "http://grafana.internal/cb",
                "http://grafana.internal:81/cb",
            ),
        ] {
            assert!(!matches(registered, requested, true), "{requested}");
        }
        assert!(matches(
            "https://app.example/cb",
            "https://app.example/cb",
            false
        ));
    }

    /// Found by the `redirect_uri` fuzz target (`fuzz/corpus/redirect_uri/crash-…`): five
    /// digits past 65535 were taken for a port, so `/authorize` minted a code for a URI it
    /// then could not redirect to.
    #[test]
    fn a_loopback_port_must_be_one_an_app_can_listen_on() {
        let registered = "http://127.0.0.1/callback";
        for port in ["82536", "65536", "99999", "0", "00000"] {
            let requested = format!("http://127.0.0.1:{port}/callback");
            assert!(!matches(registered, &requested, true), "{requested}");
        }
        for port in ["1", "65535", "08080"] {
            let requested = format!("http://127.0.0.1:{port}/callback");
            assert!(matches(registered, &requested, true), "{requested}");
            assert!(Url::parse(&requested).is_ok());
        }
    }

    #[test]
    fn plain_http_only_when_allowed() {
        let uri = "http://grafana.internal/cb";
        assert!(check(uri, RedirectRules::default()).is_err());
        assert_eq!(check(uri, RedirectRules { allow_http: true }), Ok(()));
    }
}
