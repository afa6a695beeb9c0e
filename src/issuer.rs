//! The issuer: the URL relying parties know this server by, and what follows from it — every
//! endpoint URL, the origin that same-origin checks compare against, and the `Host` value a
//! request must carry (DNS rebinding defence).

use url::Url;

/// The issuer identifier (OIDC Discovery §3), normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    url: String,
    host: String,
    origin: String,
    authority: String,
    default_port: u16,
}

impl Issuer {
    /// The issuer at `url`: no trailing slash is kept, so `iss` is written one way only.
    pub fn new(url: &Url) -> Issuer {
        let mut text = url.as_str().to_owned();
        while text.ends_with('/') {
            text.pop();
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let default_port = if url.scheme() == "https" { 443 } else { 80 };
        let port = url.port_or_known_default().unwrap_or(default_port);
        let origin = url.origin().ascii_serialization();
        Issuer {
            url: text,
            host: host.clone(),
            origin,
            authority: format!("{host}:{port}"),
            default_port,
        }
    }

    /// The issuer URL, as it appears in `iss`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The issuer's host name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The issuer's origin (`scheme://host[:port]`), as browsers send it in `Origin`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The absolute URL of an endpoint path (`/token` → `https://idp…/token`).
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Whether a request's `Host` (or HTTP/2 `:authority`) names this issuer.
    pub fn matches_host(&self, host: &str) -> bool {
        let host = host.trim();
        match host.rsplit_once(':') {
            // An IPv6 literal without a port ends in `]`; with one, the part after the last
            // colon is all digits.
            Some((_, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                host.eq_ignore_ascii_case(&self.authority)
            }
            _ => self.authority.rsplit_once(':').is_some_and(|(name, port)| {
                name.eq_ignore_ascii_case(host) && port.parse() == Ok(self.default_port)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(url: &str) -> Issuer {
        Issuer::new(&Url::parse(url).unwrap())
    }

    #[test]
    fn url_and_endpoints() {
        let i = issuer("https://idp.tail1234.ts.net/");
        assert_eq!(i.url(), "https://idp.tail1234.ts.net");
        assert_eq!(i.endpoint("/token"), "https://idp.tail1234.ts.net/token");
        assert_eq!(i.origin(), "https://idp.tail1234.ts.net");
    }

    #[test]
    fn host_matching_normalizes_ports_and_case() {
        let i = issuer("https://idp.tail1234.ts.net");
        assert!(i.matches_host("idp.tail1234.ts.net"));
        assert!(i.matches_host("IDP.tail1234.ts.net:443"));
        assert!(!i.matches_host("idp.tail1234.ts.net:8443"));
        assert!(!i.matches_host("evil.example"));
        let local = issuer("http://127.0.0.1:8765");
        assert!(local.matches_host("127.0.0.1:8765"));
        assert!(!local.matches_host("127.0.0.1"));
        assert!(!local.matches_host("localhost:8765"));
        let v6 = issuer("http://[::1]:8765");
        assert!(v6.matches_host("[::1]:8765"));
        assert!(!v6.matches_host("[::1]"));
    }
}
