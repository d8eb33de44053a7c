//! What every service's URL parser shares: shoutrrr's conventions for query parameters
//! (case-insensitive keys, aliases, yes/no booleans, unknown keys rejected), decoding, the
//! errors that name a part or parameter and never its value, and the redacted display of hosts
//! and webhook paths.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;
use url::Url;

use super::target::TargetError;

/// Query parameters with lower-cased keys, consumed by a service's parser with [`Params::take`]
/// and then [`Params::finish`]ed, which rejects any left over.
pub(crate) struct Params {
    scheme: &'static str,
    map: BTreeMap<String, String>,
}

impl Params {
    /// The query of `url`; the first value of a repeated key wins, as in shoutrrr.
    pub(crate) fn of(scheme: &'static str, url: &Url) -> Params {
        Params {
            scheme,
            map: params(url),
        }
    }

    /// The query string `query` (without the `?`).
    pub(crate) fn of_query(scheme: &'static str, query: &str) -> Result<Params, TargetError> {
        let dummy = parse_url(scheme, &format!("query://x/?{query}"))?;
        Ok(Params::of(scheme, &dummy))
    }

    /// The first of `keys` present (aliases), removing all of them; an empty value is none.
    pub(crate) fn take(&mut self, keys: &[&str]) -> Option<String> {
        take(&mut self.map, keys)
    }

    /// A yes/no parameter, `default` when absent.
    pub(crate) fn bool(&mut self, key: &str, aliases: &[&str], default: bool) -> Result<bool, TargetError> {
        let keys: Vec<&str> = std::iter::once(key).chain(aliases.iter().copied()).collect();
        parse_bool(self.scheme, key, self.take(&keys), default)
    }

    /// A parameter that must parse as `T` (a number), `expected` saying what it must be.
    pub(crate) fn parsed<T: std::str::FromStr>(
        &mut self,
        key: &str,
        expected: &'static str,
    ) -> Result<Option<T>, TargetError> {
        self.take(&[key])
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| parameter(self.scheme, key, expected))
            })
            .transpose()
    }

    /// Drops parameters that are accepted but have no effect here.
    pub(crate) fn ignore(&mut self, keys: &[&str]) {
        for key in keys {
            self.map.remove(*key);
        }
    }

    /// Rejects the first parameter no one took.
    pub(crate) fn finish(self) -> Result<(), TargetError> {
        reject_unknown(self.scheme, &self.map)
    }
}

pub(crate) fn parameter(scheme: &'static str, key: &str, expected: &'static str) -> TargetError {
    TargetError::Parameter {
        scheme,
        key: key.to_owned(),
        expected,
    }
}

pub(crate) fn form(scheme: &'static str, what: impl Into<String>) -> TargetError {
    TargetError::Form {
        scheme,
        what: what.into(),
    }
}

pub(crate) fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

pub(crate) fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

pub(crate) fn parse_url(scheme: &'static str, value: &str) -> Result<Url, TargetError> {
    // The reason from the url crate names the kind of problem, never the input.
    Url::parse(value).map_err(|e| TargetError::Syntax {
        scheme,
        reason: e.to_string(),
    })
}

/// The non-empty path segments of `url`, decoded.
pub(crate) fn segments(url: &Url) -> Vec<String> {
    url.path_segments()
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect()
}

/// `host[:port]` of `url`, or "" without a host.
pub(crate) fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
    }
}

/// `:port` if `url` names one, else "".
pub(crate) fn port_suffix(url: &Url) -> String {
    url.port().map(|p| format!(":{p}")).unwrap_or_default()
}

/// Query parameters with lower-cased keys; the first value of a repeated key wins, as in
/// shoutrrr.
pub(crate) fn params(url: &Url) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (k, v) in url.query_pairs() {
        map.entry(k.to_ascii_lowercase())
            .or_insert_with(|| v.into_owned());
    }
    map
}

/// Takes the first of `keys` present (aliases), removing all of them.
pub(crate) fn take(params: &mut BTreeMap<String, String>, keys: &[&str]) -> Option<String> {
    let mut found = None;
    for key in keys {
        if let Some(v) = params.remove(*key)
            && found.is_none()
        {
            found = Some(v);
        }
    }
    found.filter(|v| !v.is_empty())
}

pub(crate) fn reject_unknown(
    scheme: &'static str,
    params: &BTreeMap<String, String>,
) -> Result<(), TargetError> {
    match params.keys().next() {
        Some(key) => Err(TargetError::UnknownParameter {
            scheme,
            key: key.clone(),
        }),
        None => Ok(()),
    }
}

/// shoutrrr's booleans: yes/no, true/false, 1/0 and their initials.
pub(crate) fn parse_bool(
    scheme: &'static str,
    key: &str,
    value: Option<String>,
    default: bool,
) -> Result<bool, TargetError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.to_ascii_lowercase().as_str() {
        "yes" | "y" | "true" | "t" | "1" => Ok(true),
        "no" | "n" | "false" | "f" | "0" => Ok(false),
        _ => Err(parameter(scheme, key, "expected yes or no")),
    }
}

pub(crate) fn set_query(url: &mut Url, pairs: &[(String, String)]) {
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
}

/// The path segments of a webhook URL that identify or authorise it; the services' fixed words
/// (`services`, `IncomingWebhook`, …) are not secret.
pub(crate) fn secret_segments(url: &Url) -> Vec<String> {
    const PUBLIC: &[&str] = &[
        "services",
        "webhook",
        "webhookb2",
        "IncomingWebhook",
        "hooks",
        "workflows",
        "triggers",
        "manual",
        "paths",
        "invoke",
        "powerautomate",
        "automations",
        "direct",
    ];
    url.path_segments()
        .into_iter()
        .flatten()
        .filter(|s| !PUBLIC.contains(s))
        .map(str::to_owned)
        .collect()
}

pub(crate) fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

pub(crate) fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Letters, digits, `_` and `-`: what webhook tokens are made of.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// A comma-separated list, blanks dropped.
pub(crate) fn list(value: Option<String>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The host of a self-hosted service's URL with its port, as the base of its API URLs:
/// `scheme://host[:port]`.
pub(crate) fn origin(scheme: &'static str, url: &Url, web: &str) -> Result<String, TargetError> {
    match url.host_str() {
        Some(host) if !host.is_empty() => Ok(format!("{web}://{host}{}", port_suffix(url))),
        _ => Err(form(scheme, "the URL names no host")),
    }
}

/// `http` with `disabletls=yes`, else `https`: the self-hosted services' convention.
pub(crate) fn web_scheme(disable_tls: bool) -> &'static str {
    if disable_tls { "http" } else { "https" }
}
