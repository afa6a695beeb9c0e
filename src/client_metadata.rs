//! Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document, the MCP
//! 2025-11-25 way for a client to register): a `client_id` that is an `https://` URL names a
//! JSON document, served there, that describes the client. tailpass fetches it only when its
//! host matches one of the operator's `client_metadata_hosts` globs (none by default: off).
//!
//! The fetch is this server calling a URL a stranger chose, so it is fenced: https only, no
//! redirects followed, no proxy; the host's addresses resolved first and refused if any is
//! loopback, private (RFC 1918, ULA, CGNAT — which holds the tailnet's own addresses), link-local,
//! unspecified, multicast or otherwise reserved ([`is_refused_ip`]); the connection made only
//! to the addresses checked (so a second DNS answer cannot point it inside); at most
//! [`MAX_DOCUMENT`] bytes in at most [`FETCH_TIMEOUT`]; at most [`MAX_FETCHES`] at once, and
//! one at a time per URL (lookups meanwhile wait for it, then read the cache).
//! Under `--dev` loopback targets are allowed too ([`Targets::DevLoopback`]), for trying it on
//! one machine; nothing else is.
//!
//! A document is kept as its HTTP caching says ([`freshness`]: `no-store`, `no-cache` and
//! `max-age=0` keep nothing, another `max-age` is clamped to [`MIN_CACHE`]..[`MAX_CACHE`], none
//! gives [`MIN_CACHE`]), in a cache of at most [`CACHE_ENTRIES`] documents.
//!
//! The document must name itself (`client_id` equal to the URL, exactly), be a public client
//! (`token_endpoint_auth_method` `none`, so PKCE is required), and pass the same metadata rules
//! as a self-registered client; its `redirect_uris` are then matched exactly. `client_uri` and
//! `logo_uri` are read, never fetched. The client it yields has [`ClientOrigin::Metadata`]: it is
//! asked the person's consent like a dynamic client, and its version is a hash of the
//! document, so a changed document asks again.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{CACHE_CONTROL, CONTENT_LENGTH, HeaderMap};
use serde::Deserialize;
use tailpass_verify::UnixTime;
use tokio::sync::Semaphore;
use url::Url;

use crate::clients::{
    AuthMethod, Client, ClientId, ClientMetadata, ClientOrigin, GrantType, MetadataRules,
};

/// The largest document read, bytes.
pub const MAX_DOCUMENT: usize = 64 * 1024;
/// The longest a fetch may take, resolution included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest time a cacheable document is kept, whatever its `max-age`.
pub const MIN_CACHE: Duration = Duration::from_secs(60);
/// The longest time a document is kept, whatever its `max-age`.
pub const MAX_CACHE: Duration = Duration::from_secs(24 * 60 * 60);
/// The most documents kept in memory.
pub const CACHE_ENTRIES: usize = 1_024;
/// The most fetches under way at once; more are refused, not queued.
pub const MAX_FETCHES: usize = 16;
/// The longest `client_id` URL considered.
const MAX_URL: usize = 2_048;

/// Which addresses a document may be fetched from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets {
    /// Public addresses only: the production rule.
    Public,
    /// Public addresses and loopback, under `--dev` only, so documents can be served from
    /// the same machine while trying tailpass (and in its tests).
    DevLoopback,
}

/// The settings of metadata documents, resolved from `client_metadata_hosts`,
/// `client_metadata_ca_file` and `--dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentSettings {
    /// Host globs whose URLs are fetched; empty turns documents off.
    pub hosts: Vec<String>,
    /// PEM certificates that verify the hosts' certificates instead of the built-in roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Which addresses may be connected to.
    pub targets: Targets,
}

/// Why a client's metadata document was not used. Each is shown to the person at
/// `/authorize` (never redirected: the redirect URI comes from the document).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// Occurs when the URL is not an https URL with a host and a path, in normal form, without
    /// fragment or credentials.
    #[error("client_id {0}")]
    BadUrl(&'static str),
    /// Occurs when the URL's host is not one of `client_metadata_hosts`.
    #[error("client_id names a host this server does not fetch client metadata from")]
    HostNotListed,
    /// Occurs when the host does not resolve.
    #[error("the client metadata host does not resolve")]
    Resolve,
    /// Occurs when the host is, or resolves to, an address that is not public.
    #[error("the client metadata host resolves to a non-public address ({0})")]
    RefusedAddress(IpAddr),
    /// Occurs when too many documents are being fetched at once.
    #[error("too many client metadata documents are being fetched; try again")]
    Busy,
    /// Occurs when the fetch fails or takes too long.
    #[error("the client metadata document could not be fetched")]
    Fetch,
    /// Occurs when the document's server answers other than 200 (redirects included).
    #[error("the client metadata document answered HTTP {0}")]
    Status(u16),
    /// Occurs when the document is larger than [`MAX_DOCUMENT`].
    #[error("the client metadata document is larger than {MAX_DOCUMENT} bytes")]
    TooLarge,
    /// Occurs when the document is not a JSON object of client metadata.
    #[error("the client metadata document is not valid JSON metadata: {0}")]
    NotJson(String),
    /// Occurs when the document's `client_id` is not the URL it was fetched from.
    #[error("the client metadata document's client_id is not its URL")]
    ClientIdMismatch,
    /// Occurs when the document is not a public client's, or asks for a secret.
    #[error(
        "a client identified by a metadata document must be public (token_endpoint_auth_method \"none\") and hold no secret"
    )]
    NotPublic,
    /// Occurs when the metadata breaks a rule every self-registered client keeps.
    #[error("the client metadata document is invalid: {0}")]
    Invalid(String),
    /// Occurs when the settings cannot be used (an unreadable CA file).
    #[error("client metadata documents are misconfigured: {0}")]
    Setup(String),
}

/// What a metadata document says, as read. Unknown members are ignored.
#[derive(Debug, Deserialize)]
struct Document {
    client_id: String,
    #[serde(flatten)]
    metadata: ClientMetadata,
    /// Must be absent: a document is public, so a secret in it is no secret.
    client_secret: Option<serde_json::Value>,
    /// Read so that a non-string is refused; never fetched.
    #[allow(dead_code)]
    client_uri: Option<String>,
    /// Read so that a non-string is refused; never fetched.
    #[allow(dead_code)]
    logo_uri: Option<String>,
}

struct Cached {
    client: Arc<Client>,
    until: Instant,
}

/// Fetches, checks and caches client metadata documents.
pub struct Documents {
    settings: DocumentSettings,
    rules: MetadataRules,
    roots: Vec<reqwest::Certificate>,
    cache: Mutex<HashMap<String, Cached>>,
    fetches: Semaphore,
    /// One lock per URL being fetched: lookups of a URL wait for the fetch under way, then
    /// find it in the cache, rather than fetch it again. Bounded like the cache.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Documents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Documents")
            .field("hosts", &self.settings.hosts)
            .field("targets", &self.settings.targets)
            .finish_non_exhaustive()
    }
}

/// Whether `client_id` is meant as a metadata document's URL (RFC 3986 says schemes are
/// case-insensitive; a URL not in normal form is refused later).
pub fn is_document_url(client_id: &str) -> bool {
    client_id
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

impl Documents {
    /// Documents fetched under `settings`, checked by `rules` (a self-registered client's).
    pub fn new(
        settings: DocumentSettings,
        rules: MetadataRules,
    ) -> Result<Documents, DocumentError> {
        let roots = match &settings.ca_file {
            Some(path) => read_roots(path)?,
            None => Vec::new(),
        };
        Ok(Documents {
            settings,
            rules,
            roots,
            cache: Mutex::new(HashMap::new()),
            fetches: Semaphore::new(MAX_FETCHES),
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// Whether any host is configured (documents are on).
    pub fn enabled(&self) -> bool {
        !self.settings.hosts.is_empty()
    }

    /// The client `client_id` (an https URL) describes: from the cache while it is fresh,
    /// else fetched and checked.
    pub async fn client(
        &self,
        client_id: &str,
        now: UnixTime,
    ) -> Result<Arc<Client>, DocumentError> {
        let url = self.check_url(client_id)?;
        if let Some(client) = self.cached(client_id) {
            return Ok(client);
        }
        let flight = self.join(client_id)?;
        let fetched = self.fetch_in_turn(client_id, &url, &flight, now).await;
        self.leave(client_id, &flight);
        fetched
    }

    /// Fetches `url` once the fetch of it under way, if any, is done — unless that one left
    /// it in the cache.
    async fn fetch_in_turn(
        &self,
        client_id: &str,
        url: &Url,
        flight: &tokio::sync::Mutex<()>,
        now: UnixTime,
    ) -> Result<Arc<Client>, DocumentError> {
        let Ok(_turn) = tokio::time::timeout(FETCH_TIMEOUT, flight.lock()).await else {
            return Err(DocumentError::Busy);
        };
        if let Some(client) = self.cached(client_id) {
            return Ok(client);
        }
        let Ok(_permit) = self.fetches.try_acquire() else {
            return Err(DocumentError::Busy);
        };
        let (body, keep) = tokio::time::timeout(FETCH_TIMEOUT, self.fetch(url))
            .await
            .map_err(|_| DocumentError::Fetch)??;
        let client = Arc::new(self.read(client_id, &body, now)?);
        if let Some(keep) = keep {
            self.remember(client_id, client.clone(), keep);
        }
        Ok(client)
    }

    /// The lock of `client_id`'s fetches, made if none is under way; refused when as many
    /// URLs as the cache holds are being fetched.
    fn join(&self, client_id: &str) -> Result<Arc<tokio::sync::Mutex<()>>, DocumentError> {
        let Ok(mut flights) = self.flights.lock() else {
            return Err(DocumentError::Busy);
        };
        if let Some(flight) = flights.get(client_id) {
            return Ok(flight.clone());
        }
        if flights.len() >= CACHE_ENTRIES {
            return Err(DocumentError::Busy);
        }
        let flight = Arc::new(tokio::sync::Mutex::new(()));
        flights.insert(client_id.to_owned(), flight.clone());
        Ok(flight)
    }

    /// Forgets `client_id`'s lock once no other lookup holds it (joining and leaving happen
    /// under the table's lock, so none can join meanwhile).
    fn leave(&self, client_id: &str, flight: &Arc<tokio::sync::Mutex<()>>) {
        if let Ok(mut flights) = self.flights.lock()
            && Arc::strong_count(flight) <= 2
        {
            flights.remove(client_id);
        }
    }

    /// The URL, if it may name a document here: https, normal form, a path, no fragment or
    /// credentials, and a listed host.
    fn check_url(&self, client_id: &str) -> Result<Url, DocumentError> {
        if client_id.len() > MAX_URL {
            return Err(DocumentError::BadUrl("is too long"));
        }
        let url = Url::parse(client_id).map_err(|_| DocumentError::BadUrl("is not a URL"))?;
        if url.scheme() != "https" {
            return Err(DocumentError::BadUrl("must be an https URL"));
        }
        if url.as_str() != client_id {
            return Err(DocumentError::BadUrl(
                "must be a URL in normal form (no dot segments, lowercase scheme and host)",
            ));
        }
        if url.path() == "/" {
            return Err(DocumentError::BadUrl("must have a path"));
        }
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(DocumentError::BadUrl(
                "must not have a fragment or credentials",
            ));
        }
        let host = url.host_str().unwrap_or_default();
        if !self
            .settings
            .hosts
            .iter()
            .any(|pattern| tailpass_verify::glob::matches(pattern, host))
        {
            return Err(DocumentError::HostNotListed);
        }
        Ok(url)
    }

    fn cached(&self, client_id: &str) -> Option<Arc<Client>> {
        let cache = self.cache.lock().ok()?;
        let entry = cache.get(client_id)?;
        (entry.until > Instant::now()).then(|| entry.client.clone())
    }

    /// Keeps a document for `keep`; with the cache full of fresh documents, it is not kept.
    fn remember(&self, client_id: &str, client: Arc<Client>, keep: Duration) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let now = Instant::now();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, entry| entry.until > now);
        }
        if cache.len() < CACHE_ENTRIES || cache.contains_key(client_id) {
            cache.insert(
                client_id.to_owned(),
                Cached {
                    client,
                    until: now + keep,
                },
            );
        }
    }

    /// The document's bytes and how long they may be kept.
    async fn fetch(&self, url: &Url) -> Result<(Vec<u8>, Option<Duration>), DocumentError> {
        let port = url.port_or_known_default().unwrap_or(443);
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT);
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip))?,
            Some(url::Host::Domain(name)) => {
                let addrs = self.resolve(name, port).await?;
                builder = builder.resolve_to_addrs(name, &addrs);
            }
            None => return Err(DocumentError::BadUrl("must have a host")),
        }
        if !self.roots.is_empty() {
            builder = builder.tls_built_in_root_certs(false);
            for root in &self.roots {
                builder = builder.add_root_certificate(root.clone());
            }
        }
        let http = builder
            .build()
            .map_err(|e| DocumentError::Setup(e.to_string()))?;
        let mut response = http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "client metadata fetch failed");
                DocumentError::Fetch
            })?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(DocumentError::Status(response.status().as_u16()));
        }
        if declared_length(response.headers()).is_some_and(|n| n > MAX_DOCUMENT) {
            return Err(DocumentError::TooLarge);
        }
        let keep = freshness(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|_| DocumentError::Fetch)? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(DocumentError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, keep))
    }

    /// Every address of `name`, or a refusal if any is not allowed (a name that answers one
    /// public and one private address is refused: which one a connection gets is not ours to
    /// choose).
    async fn resolve(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, DocumentError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
            .await
            .map_err(|_| DocumentError::Resolve)?
            .collect();
        if addrs.is_empty() {
            return Err(DocumentError::Resolve);
        }
        check_addrs(&addrs, self.settings.targets)?;
        Ok(addrs)
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), DocumentError> {
        check_addrs(&[SocketAddr::new(ip, 0)], self.settings.targets)
    }

    /// The client a document's bytes describe, checked.
    fn read(&self, client_id: &str, body: &[u8], now: UnixTime) -> Result<Client, DocumentError> {
        let document: Document =
            serde_json::from_slice(body).map_err(|e| DocumentError::NotJson(e.to_string()))?;
        if document.client_id != client_id {
            return Err(DocumentError::ClientIdMismatch);
        }
        if document.client_secret.is_some()
            || document.metadata.token_endpoint_auth_method.as_deref() != Some("none")
        {
            return Err(DocumentError::NotPublic);
        }
        let mut metadata = document.metadata;
        // Back-channel logout and the tailpass `resources` extension are for registered
        // clients; a document's are not used.
        metadata.backchannel_logout_uri = None;
        metadata.backchannel_logout_session_required = None;
        metadata.resources = None;
        let valid = metadata
            .validate(&self.rules)
            .map_err(|e| DocumentError::Invalid(e.to_string()))?;
        if valid.token_endpoint_auth_method != AuthMethod::None {
            return Err(DocumentError::NotPublic);
        }
        if let Some(grant) = valid
            .grant_types
            .iter()
            .find(|g| !matches!(g, GrantType::AuthorizationCode | GrantType::RefreshToken))
        {
            return Err(DocumentError::Invalid(format!(
                "grant type {:?} is not available to a client identified by a metadata document",
                grant.as_str()
            )));
        }
        let mut client = Client::from_metadata(
            ClientId(client_id.to_owned()),
            valid,
            ClientOrigin::Metadata,
            now,
            None,
        );
        // The person's grants decide which resources they may sign in to it for, and the
        // consent page names them.
        client.resources = vec!["*".to_owned()];
        client.version = version_of(body);
        Ok(client)
    }
}

/// A document's version: the first eight bytes of its SHA-256, so that any change to what
/// the person approved asks them again.
fn version_of(body: &[u8]) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut first = [0u8; 8];
    for (to, from) in first.iter_mut().zip(digest.as_ref()) {
        *to = *from;
    }
    u64::from_be_bytes(first)
}

fn read_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, DocumentError> {
    let pem = std::fs::read(path)
        .map_err(|e| DocumentError::Setup(format!("{}: {e}", path.display())))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| DocumentError::Setup(format!("{}: {e}", path.display())))?;
    if roots.is_empty() {
        return Err(DocumentError::Setup(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(roots)
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse::<usize>()
        .ok()
}

/// Refuses the first address `targets` does not allow.
fn check_addrs(addrs: &[SocketAddr], targets: Targets) -> Result<(), DocumentError> {
    match addrs.iter().find(|a| is_refused_ip(a.ip(), targets)) {
        Some(refused) => Err(DocumentError::RefusedAddress(refused.ip())),
        None => Ok(()),
    }
}

/// Whether a document may not be fetched from `ip`: anything but a public unicast address —
/// loopback (allowed under [`Targets::DevLoopback`]), unspecified, private (RFC 1918, IPv6
/// ULA), shared address space (100.64.0.0/10, where tailnet addresses live), link-local (the
/// cloud metadata services), multicast, broadcast, documentation, benchmarking and reserved
/// ranges; IPv4 inside IPv6 (mapped, compatible, NAT64, 6to4) is judged as the IPv4 address.
pub fn is_refused_ip(ip: IpAddr, targets: Targets) -> bool {
    let loopback_ok = targets == Targets::DevLoopback;
    match ip {
        IpAddr::V4(v4) => is_refused_v4(v4, loopback_ok),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_refused_v4(v4, loopback_ok),
            None => is_refused_v6(v6, loopback_ok),
        },
    }
}

fn is_refused_v4(ip: Ipv4Addr, loopback_ok: bool) -> bool {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        return !loopback_ok;
    }
    a == 0 // "this network", unspecified included
        || ip.is_private()
        || (a == 100 && (b & 0xc0) == 64) // shared address space, RFC 6598 (tailnets)
        || ip.is_link_local()
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 198 && (b & 0xfe) == 18) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || ip.is_multicast()
        || a >= 240 // reserved, broadcast included
}

fn is_refused_v6(ip: Ipv6Addr, loopback_ok: bool) -> bool {
    let first = ip.segments().first().copied().unwrap_or_default();
    if ip.is_loopback() {
        return !loopback_ok;
    }
    ip.is_unspecified()
        || (first & 0xfe00) == 0xfc00 // unique local, RFC 4193
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local, deprecated
        || (first & 0xff00) == 0xff00 // multicast
        || (first == 0x2001 && ip.segments().get(1) == Some(&0x0db8)) // documentation
        || (first == 0x0100 && ip.segments().get(1..4) == Some(&[0, 0, 0][..])) // discard
}

/// The IPv4 address an IPv6 address stands for, if it embeds one: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, but `::` and `::1`), NAT64
/// (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(tail(hi, lo)),
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) != (0, 0) && (hi, lo) != (0, 1) => {
            Some(tail(hi, lo))
        }
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(tail(hi, lo)),
        [0x2002, hi, lo, ..] => Some(tail(hi, lo)),
        _ => None,
    }
}

/// How long a response may be kept, from its `Cache-Control` (RFC 9111 §5.2.2): `None` for
/// `no-store`, `no-cache` or `max-age=0` (used for this request only); `max-age=N` less the
/// response's `Age`, `None` when nothing is left, else clamped to [`MIN_CACHE`]..[`MAX_CACHE`];
/// [`MIN_CACHE`] when it says nothing (or nothing readable). `Expires` is not read.
pub fn freshness(headers: &HeaderMap) -> Option<Duration> {
    let mut max_age: Option<u64> = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for directive in value.split(',') {
            let directive = directive.trim();
            let (name, argument) = match directive.split_once('=') {
                Some((name, argument)) => (name.trim(), Some(argument.trim().trim_matches('"'))),
                None => (directive, None),
            };
            if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
                return None;
            }
            if name.eq_ignore_ascii_case("max-age")
                && let Some(seconds) = argument.and_then(|a| a.parse::<u64>().ok())
            {
                // RFC 9111 §4.2.1: with several, the first one counts.
                max_age.get_or_insert(seconds);
            }
        }
    }
    // RFC 9111 §4.2.3: what a cache on the way already spent of it is gone.
    let age = headers
        .get(reqwest::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    match max_age.map(|m| m.saturating_sub(age)) {
        Some(0) => None,
        Some(seconds) => Some(Duration::from_secs(seconds).clamp(MIN_CACHE, MAX_CACHE)),
        None => Some(MIN_CACHE),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use reqwest::header::HeaderValue;
    use tailpass_verify::Alg;

    use super::*;
    use crate::clients::Registrant;
    use crate::clients::redirect::RedirectRules;

    fn refused(ip: &str) -> bool {
        is_refused_ip(ip.parse().unwrap(), Targets::Public)
    }

    #[test]
    fn every_non_public_range_is_refused_and_public_addresses_are_not() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.101.102.103",
            "100.127.255.255",
            "169.254.169.254",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "::",
            "::1",
            "fc00::1",
            "fd7a:115c:a1e0::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
            // IPv4 inside IPv6 is judged as the IPv4 address.
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:100.64.0.1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:c0a8:0101::1",
        ] {
            assert!(refused(ip), "{ip} must be refused");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(!refused(ip), "{ip} is public");
        }
    }

    #[test]
    fn dev_allows_loopback_and_nothing_else_more() {
        for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(
                !is_refused_ip(ip.parse().unwrap(), Targets::DevLoopback),
                "{ip}"
            );
        }
        for ip in [
            "10.0.0.1",
            "100.64.0.1",
            "169.254.169.254",
            "fd00::1",
            "0.0.0.0",
        ] {
            assert!(
                is_refused_ip(ip.parse().unwrap(), Targets::DevLoopback),
                "{ip}"
            );
        }
    }

    #[test]
    fn one_refused_address_among_public_ones_refuses_the_host() {
        let addrs: Vec<SocketAddr> = ["1.1.1.1:443", "10.0.0.1:443"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(
            check_addrs(&addrs, Targets::Public),
            Err(DocumentError::RefusedAddress("10.0.0.1".parse().unwrap()))
        );
        assert!(check_addrs(&addrs[..1], Targets::Public).is_ok());
    }

    fn cache_control(values: &[&str]) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(CACHE_CONTROL, HeaderValue::from_str(value).unwrap());
        }
        freshness(&headers)
    }

    #[test]
    fn cache_control_is_honoured_within_bounds() {
        assert_eq!(
            cache_control(&[]),
            Some(MIN_CACHE),
            "no header: the minimum"
        );
        assert_eq!(
            cache_control(&["max-age=3600"]),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            cache_control(&["public, max-age=\"600\""]),
            Some(Duration::from_secs(600))
        );
        assert_eq!(cache_control(&["max-age=5"]), Some(MIN_CACHE), "clamped up");
        assert_eq!(
            cache_control(&["max-age=99999999"]),
            Some(MAX_CACHE),
            "clamped down"
        );
        assert_eq!(cache_control(&["no-store"]), None);
        assert_eq!(cache_control(&["max-age=600", "No-Cache"]), None);
        assert_eq!(cache_control(&["private, no-store, max-age=600"]), None);
        assert_eq!(cache_control(&["max-age=0"]), None);
        assert_eq!(
            cache_control(&["max-age=120, max-age=7200"]),
            Some(Duration::from_secs(120)),
            "the first max-age counts"
        );
        assert_eq!(
            cache_control(&["max-age=soon"]),
            Some(MIN_CACHE),
            "unreadable: ignored"
        );
        let mut aged = HeaderMap::new();
        aged.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
        aged.insert(reqwest::header::AGE, HeaderValue::from_static("600"));
        assert_eq!(
            freshness(&aged),
            Some(Duration::from_secs(3000)),
            "Age is spent"
        );
        aged.insert(reqwest::header::AGE, HeaderValue::from_static("3600"));
        assert_eq!(freshness(&aged), None, "stale on arrival: not kept");
    }

    fn documents(hosts: &[&str]) -> Documents {
        Documents::new(
            DocumentSettings {
                hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
                ca_file: None,
                targets: Targets::Public,
            },
            MetadataRules {
                redirect: RedirectRules { allow_http: false },
                algs: BTreeSet::from([Alg::RS256, Alg::ES256]),
                registrant: Registrant::SelfRegistered,
            },
        )
        .unwrap()
    }

    #[test]
    fn only_listed_hosts_and_normal_https_urls_are_fetched() {
        let docs = documents(&["*.example.com", "mcp.example.org"]);
        assert!(
            docs.check_url("https://app.example.com/client.json")
                .is_ok()
        );
        assert!(
            docs.check_url("https://mcp.example.org/oauth/client")
                .is_ok()
        );
        for (url, why) in [
            (
                "https://example.net/client.json",
                DocumentError::HostNotListed,
            ),
            ("https://evil.example.org/c", DocumentError::HostNotListed),
            (
                "http://app.example.com/client.json",
                DocumentError::BadUrl("must be an https URL"),
            ),
            (
                "https://app.example.com/",
                DocumentError::BadUrl("must have a path"),
            ),
        ] {
            assert_eq!(docs.check_url(url).unwrap_err(), why, "{url}");
        }
        for url in [
            "https://app.example.com/a/../client.json",
            "https://APP.example.com/client.json",
            "https://user@app.example.com/client.json",
            "https://app.example.com/client.json#x",
        ] {
            assert!(docs.check_url(url).is_err(), "{url}");
        }
        assert!(is_document_url("HTTPS://x/y") && !is_document_url("abc123"));
        assert!(!documents(&[]).enabled());
    }

    #[test]
    fn a_document_must_name_itself_and_be_public() {
        let docs = documents(&["app.example.com"]);
        let id = "https://app.example.com/client.json";
        let now = UnixTime(1_000);
        let good = serde_json::json!({
            "client_id": id,
            "client_name": "Example MCP client",
            "redirect_uris": ["http://127.0.0.1:3000/callback"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "client_uri": "https://app.example.com",
            "logo_uri": "https://app.example.com/logo.png",
            "backchannel_logout_uri": "https://app.example.com/logout",
        });
        let client = docs.read(id, good.to_string().as_bytes(), now).unwrap();
        assert_eq!(client.client_name, "Example MCP client");
        assert!(client.is_public());
        assert_eq!(client.origin, ClientOrigin::Metadata);
        assert_eq!(
            client.backchannel_logout_uri, None,
            "not taken from a document"
        );
        assert!(client.allows_redirect("http://127.0.0.1:3000/callback"));
        assert!(!client.allows_redirect("http://127.0.0.1:3000/callback/other"));
        let mut changed = good.clone();
        changed["client_name"] = "Renamed".into();
        let renamed = docs.read(id, changed.to_string().as_bytes(), now).unwrap();
        assert_ne!(
            renamed.version, client.version,
            "a changed document asks consent again"
        );

        let mut other = good.clone();
        other["client_id"] = "https://app.example.com/other.json".into();
        assert_eq!(
            docs.read(id, other.to_string().as_bytes(), now)
                .unwrap_err(),
            DocumentError::ClientIdMismatch
        );
        for (member, value) in [
            (
                "token_endpoint_auth_method",
                serde_json::json!("client_secret_basic"),
            ),
            ("client_secret", serde_json::json!("s3cret")),
        ] {
            let mut bad = good.clone();
            bad[member] = value;
            assert_eq!(
                docs.read(id, bad.to_string().as_bytes(), now).unwrap_err(),
                DocumentError::NotPublic,
                "{member}"
            );
        }
        let mut no_method = good.clone();
        no_method
            .as_object_mut()
            .unwrap()
            .remove("token_endpoint_auth_method");
        assert_eq!(
            docs.read(id, no_method.to_string().as_bytes(), now)
                .unwrap_err(),
            DocumentError::NotPublic
        );
        let mut exchange = good.clone();
        exchange["grant_types"] = serde_json::json!([GrantType::TokenExchange.as_str()]);
        assert!(matches!(
            docs.read(id, exchange.to_string().as_bytes(), now),
            Err(DocumentError::Invalid(_))
        ));
        let mut no_redirect = good.clone();
        no_redirect["redirect_uris"] = serde_json::json!([]);
        assert!(matches!(
            docs.read(id, no_redirect.to_string().as_bytes(), now),
            Err(DocumentError::Invalid(_))
        ));
        assert!(matches!(
            docs.read(id, b"[1, 2]", now),
            Err(DocumentError::NotJson(_))
        ));
    }

    #[tokio::test]
    async fn a_urls_fetch_lock_is_shared_while_used_then_forgotten() {
        let docs = documents(&["app.example.com"]);
        let id = "https://app.example.com/client.json";
        let first = docs.join(id).unwrap();
        let second = docs.join(id).unwrap();
        assert!(Arc::ptr_eq(&first, &second), "one fetch per URL at a time");
        docs.leave(id, &first);
        drop(first);
        assert_eq!(docs.flights.lock().unwrap().len(), 1, "still held");
        docs.leave(id, &second);
        assert!(
            docs.flights.lock().unwrap().is_empty(),
            "forgotten once unused"
        );
    }

    #[tokio::test]
    async fn fetches_beyond_the_bound_are_refused_not_queued() {
        let docs = documents(&["app.example.com"]);
        let _all = docs
            .fetches
            .try_acquire_many(u32::try_from(MAX_FETCHES).unwrap())
            .unwrap();
        assert_eq!(
            docs.client("https://app.example.com/client.json", UnixTime(0))
                .await
                .unwrap_err(),
            DocumentError::Busy
        );
    }

    #[tokio::test]
    async fn a_host_resolving_to_loopback_is_refused_outside_dev() {
        let docs = documents(&["localhost"]);
        let refused = docs.resolve("localhost", 443).await.unwrap_err();
        assert!(
            matches!(refused, DocumentError::RefusedAddress(ip) if ip.is_loopback()),
            "{refused}"
        );
        let literal = docs
            .client("https://localhost/c.json", UnixTime(0))
            .await
            .unwrap_err();
        assert!(
            matches!(literal, DocumentError::RefusedAddress(_)),
            "{literal}"
        );
    }
}
