//! Which requests the gateway forwards: a method and path allowlist per upstream API.
//!
//! The upstream key can do everything its account can (read and delete files, run batches,
//! fetch stored completions), while a token only grants model calls. So only inference
//! endpoints are forwarded: each API has a built-in list, and an upstream's `paths` setting
//! opts in more (`"POST /v1/batches"`), matched on the path after the gateway's prefix. A path
//! segment `{name}` matches one segment of letters, digits, `.`, `_` and `-`; `{model}` also
//! names the model the request is for (Gemini puts it in the path). Paths that could mean
//! something else once an upstream decodes or normalizes them (`..`, `//`, encoded `/`, `.`
//! or `\`) are refused before any matching.

use axum::http::Method;

/// The API an upstream speaks, which decides its built-in allowlist and how usage is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// OpenAI's API and compatible ones.
    #[default]
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google's Gemini API.
    Gemini,
}

/// What an allowed request may cost in LLM tokens, which decides its reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Generates text: reserves its output limit plus an estimate of its input.
    Generation,
    /// Reads its input only (embeddings): reserves an estimate of the input.
    Input,
    /// Costs no LLM tokens the gateway can see (listing models, counting tokens, and every
    /// request opted in through `paths`, whose cost the upstream bills later if at all).
    Free,
}

/// One allowed request: a method and a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    method: Method,
    segments: Vec<Segment>,
    cost: Cost,
    /// OpenAI streams that report usage only when `stream_options.include_usage` is set.
    usage_opt_in: bool,
    /// Whether its body, when it has one, is a JSON object (every built-in endpoint's is).
    json_body: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `prefix{name}suffix`.
    Parameter {
        prefix: String,
        name: String,
        suffix: String,
    },
}

/// Why a request is not forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Occurs when the path holds `..`, `//`, or an encoded `/`, `.` or `\`.
    #[error("the path {0:?} is not accepted (no '..', '//' or encoded separators)")]
    UnsafePath(String),
    /// Occurs when no allowed endpoint matches.
    #[error("{0} {1} is not an endpoint this gateway forwards")]
    NotAllowed(Method, String),
}

/// An allowed request, matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The API of the upstream it goes to, which decides how its body is read.
    pub api: Api,
    /// The model named by the path, if its pattern has `{model}`.
    pub model: Option<String>,
    /// What it may cost.
    pub cost: Cost,
    /// Whether a streamed answer reports usage only when asked to
    /// (`stream_options.include_usage`).
    pub usage_opt_in: bool,
    /// Whether its body, when it has one, must be a JSON object: true for the built-in
    /// endpoints, false for those opted in through `paths`, which may take any body (a file
    /// upload, say).
    pub json_body: bool,
}

const OPENAI: &[(&str, Cost)] = &[
    ("POST /v1/chat/completions", Cost::Generation),
    ("POST /v1/completions", Cost::Generation),
    ("POST /v1/responses", Cost::Generation),
    ("POST /v1/embeddings", Cost::Input),
    ("GET /v1/models", Cost::Free),
    ("GET /v1/models/{model}", Cost::Free),
];

const ANTHROPIC: &[(&str, Cost)] = &[
    ("POST /v1/messages", Cost::Generation),
    ("POST /v1/messages/count_tokens", Cost::Free),
    ("GET /v1/models", Cost::Free),
    ("GET /v1/models/{model}", Cost::Free),
];

const GEMINI: &[(&str, Cost)] = &[
    (
        "POST /v1beta/models/{model}:generateContent",
        Cost::Generation,
    ),
    (
        "POST /v1beta/models/{model}:streamGenerateContent",
        Cost::Generation,
    ),
    ("POST /v1beta/models/{model}:countTokens", Cost::Free),
    ("POST /v1beta/models/{model}:embedContent", Cost::Input),
    ("GET /v1beta/models", Cost::Free),
    ("GET /v1beta/models/{model}", Cost::Free),
    ("POST /v1/models/{model}:generateContent", Cost::Generation),
    (
        "POST /v1/models/{model}:streamGenerateContent",
        Cost::Generation,
    ),
    ("POST /v1/models/{model}:countTokens", Cost::Free),
    ("POST /v1/models/{model}:embedContent", Cost::Input),
    ("GET /v1/models", Cost::Free),
    ("GET /v1/models/{model}", Cost::Free),
];

/// OpenAI endpoints whose streams carry usage only on request.
const OPENAI_USAGE_OPT_IN: &[&str] = &["/v1/chat/completions", "/v1/completions"];

fn parameter_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl Endpoint {
    /// Parses `"METHOD /path"` (a `paths` entry), refusing paths the gateway would refuse.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        Endpoint::with_cost(text, Cost::Free)
    }

    fn with_cost(text: &str, cost: Cost) -> Result<Endpoint, String> {
        let bad = |why: &str| format!("{text:?}: {why} (expected \"METHOD /path\")");
        let (method, path) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| bad("no method"))?;
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(bad("the method must be an upper-case HTTP method"));
        }
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad("bad method"))?;
        let path = path.trim();
        if !path.starts_with('/') || path.contains('?') {
            return Err(bad("the path must start with '/' and hold no query"));
        }
        check_path(path).map_err(|e| bad(&e.to_string()))?;
        let segments = path
            .get(1..)
            .unwrap_or_default()
            .split('/')
            .map(|segment| Segment::parse(segment).ok_or_else(|| bad("bad '{name}' segment")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Endpoint {
            method,
            segments,
            cost,
            usage_opt_in: false,
            json_body: false,
        })
    }

    fn matches(&self, method: &Method, path: &str) -> Option<Matched> {
        if *method != self.method {
            return None;
        }
        let mut parts = path.get(1..)?.split('/');
        let mut model = None;
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Parameter {
                    prefix,
                    name,
                    suffix,
                } => {
                    let value = part.strip_prefix(prefix.as_str())?;
                    let value = value.strip_suffix(suffix.as_str())?;
                    if value.is_empty() || !value.chars().all(parameter_char) {
                        return None;
                    }
                    if name == "model" {
                        model = Some(value.to_owned());
                    }
                }
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Matched {
            api: Api::default(),
            model,
            cost: self.cost,
            usage_opt_in: self.usage_opt_in,
            json_body: self.json_body,
        })
    }
}

impl Segment {
    fn parse(segment: &str) -> Option<Segment> {
        let Some((prefix, rest)) = segment.split_once('{') else {
            return (!segment.contains('}')).then(|| Segment::Literal(segment.to_owned()));
        };
        let (name, suffix) = rest.split_once('}')?;
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || prefix.contains('}')
            || suffix.contains(['{', '}'])
        {
            return None;
        }
        Some(Segment::Parameter {
            prefix: prefix.to_owned(),
            name: name.to_owned(),
            suffix: suffix.to_owned(),
        })
    }
}

/// Refuses paths an upstream might read differently from the gateway: `..`, `//`, and
/// percent-encoded `/`, `.` or `\` (which decode into separators or dot segments), or `\`.
pub fn check_path(path: &str) -> Result<(), Refused> {
    let lower = path.to_ascii_lowercase();
    let unsafe_path = lower.contains("..")
        || lower.contains("//")
        || lower.contains('\\')
        || ["%2f", "%2e", "%5c"].iter().any(|e| lower.contains(e));
    if unsafe_path {
        return Err(Refused::UnsafePath(path.to_owned()));
    }
    Ok(())
}

/// An upstream's allowlist: its API's built-in endpoints, then its opted-in `paths`.
#[derive(Debug, Clone)]
pub struct Endpoints {
    api: Api,
    allowed: Vec<Endpoint>,
}

impl Endpoints {
    /// The built-in list of `api` plus `extra`.
    pub fn new(api: Api, extra: &[Endpoint]) -> Endpoints {
        let builtin = match api {
            Api::Openai => OPENAI,
            Api::Anthropic => ANTHROPIC,
            Api::Gemini => GEMINI,
        };
        let mut allowed: Vec<Endpoint> = builtin
            .iter()
            .filter_map(|(text, cost)| {
                let mut endpoint = Endpoint::with_cost(text, *cost).ok()?;
                endpoint.usage_opt_in =
                    api == Api::Openai && OPENAI_USAGE_OPT_IN.iter().any(|p| text.ends_with(p));
                endpoint.json_body = true;
                Some(endpoint)
            })
            .collect();
        allowed.extend(extra.iter().cloned());
        Endpoints { api, allowed }
    }

    /// Whether `method` `path` (the path after the prefix, without the query) is forwarded,
    /// and what it is.
    pub fn check(&self, method: &Method, path: &str) -> Result<Matched, Refused> {
        check_path(path)?;
        self.allowed
            .iter()
            .find_map(|endpoint| endpoint.matches(method, path))
            .map(|matched| Matched {
                api: self.api,
                ..matched
            })
            .ok_or_else(|| Refused::NotAllowed(method.clone(), path.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(api: Api, extra: &[&str], method: Method, path: &str) -> Result<Matched, Refused> {
        let extra: Vec<Endpoint> = extra.iter().map(|e| Endpoint::parse(e).unwrap()).collect();
        Endpoints::new(api, &extra).check(&method, path)
    }

    #[test]
    fn every_builtin_entry_parses() {
        for list in [OPENAI, ANTHROPIC, GEMINI] {
            for (text, cost) in list {
                assert!(Endpoint::with_cost(text, *cost).is_ok(), "{text}");
            }
        }
    }

    #[test]
    fn only_inference_endpoints_are_forwarded_unless_opted_in() {
        let ok = check(Api::Openai, &[], Method::POST, "/v1/chat/completions").unwrap();
        assert_eq!((ok.cost, ok.usage_opt_in), (Cost::Generation, true));
        assert!(check(Api::Openai, &[], Method::GET, "/v1/models").is_ok());
        for (method, path) in [
            (Method::GET, "/v1/files"),
            (Method::DELETE, "/v1/files/file-abc"),
            (Method::GET, "/v1/chat/completions"),
            (Method::POST, "/v1/batches"),
            (Method::GET, "/v1/responses/resp_1"),
            (Method::POST, "/v1/chat/completions/"),
        ] {
            assert!(
                matches!(
                    check(Api::Openai, &[], method.clone(), path),
                    Err(Refused::NotAllowed(..))
                ),
                "{method} {path}"
            );
        }
        assert!(
            check(
                Api::Openai,
                &["POST /v1/batches"],
                Method::POST,
                "/v1/batches"
            )
            .is_ok()
        );
        let file = check(
            Api::Openai,
            &["GET /v1/files/{id}"],
            Method::GET,
            "/v1/files/file-1",
        )
        .unwrap();
        assert_eq!((file.cost, file.model), (Cost::Free, None));
        assert!(check(Api::Anthropic, &[], Method::POST, "/v1/chat/completions").is_err());
        assert!(check(Api::Anthropic, &[], Method::POST, "/v1/messages").is_ok());
    }

    #[test]
    fn gemini_names_its_model_in_the_path() {
        let matched = check(
            Api::Gemini,
            &[],
            Method::POST,
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        )
        .unwrap();
        assert_eq!(matched.model.as_deref(), Some("gemini-2.0-flash"));
        assert!(!matched.usage_opt_in);
        for path in [
            "/v1beta/models/:generateContent",
            "/v1beta/models/a%2Db:generateContent",
            "/v1beta/models/gemini:deleteEverything",
            "/v1beta/tunedModels/x:generateContent",
        ] {
            assert!(
                check(Api::Gemini, &[], Method::POST, path).is_err(),
                "{path}"
            );
        }
    }

    #[test]
    fn paths_that_decode_into_something_else_are_refused() {
        for path in [
            "/v1/chat/completions/../files",
            "/v1//files",
            "/v1/files%2Ffile-1",
            "/v1/files%2ffile-1",
            "/v1/%2e%2e/files",
            "/v1/a\\b",
        ] {
            assert!(
                matches!(
                    check(Api::Openai, &[], Method::POST, path),
                    Err(Refused::UnsafePath(_))
                ),
                "{path}"
            );
        }
        for bad in [
            "/v1/batches",
            "post /v1/batches",
            "POST v1/batches",
            "POST /v1/../files",
            "POST /v1/{",
            "GET /v1/files?x=1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
