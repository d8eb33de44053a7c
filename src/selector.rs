//! Kubernetes label selectors, label keys and values: syntax checks done once at start-up, so a
//! typo in `--blocking-pod-selector` is reported before the first reboot instead of at the
//! first API call. The API server remains the authority on matching.

use std::fmt;

/// Why a label selector, key or value is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("label key {key:?} is not valid: {reason}")]
    Key { key: String, reason: &'static str },
    #[error("label value {value:?} is not valid: {reason}")]
    Value { value: String, reason: &'static str },
    #[error("requirement {requirement:?} is not valid: {reason}")]
    Requirement {
        requirement: String,
        reason: &'static str,
    },
}

/// A parsed label selector: the requirements, all of which must hold. Empty selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    DoesNotExist(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

impl LabelSelector {
    /// Parses the selector syntax of `kubectl get -l` and of the API's `labelSelector` parameter:
    /// comma-separated `key`, `!key`, `key=value`, `key==value`, `key!=value`,
    /// `key in (a,b)`, `key notin (a,b)`, `key>n`, `key<n`.
    pub fn parse(selector: &str) -> Result<LabelSelector, SyntaxError> {
        let requirements = split_requirements(selector)?
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LabelSelector { requirements })
    }

    /// True if the selector has no requirements and so selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether a set of labels satisfies every requirement, as the API server decides it: the
    /// tests' reading of what a parsed selector means.
    #[cfg(test)]
    fn matches<'a>(&self, labels: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Exists(k) => labels(k).is_some(),
            Requirement::DoesNotExist(k) => labels(k).is_none(),
            Requirement::Equals(k, v) => labels(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => labels(k) != Some(v.as_str()),
            Requirement::In(k, vs) => labels(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => labels(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::GreaterThan(k, n) => labels(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            Requirement::LessThan(k, n) => labels(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }
}

impl fmt::Display for LabelSelector {
    /// The canonical form, accepted by the API server's `labelSelector` parameter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::GreaterThan(k, n) => write!(f, "{k}>{n}")?,
                Requirement::LessThan(k, n) => write!(f, "{k}<{n}")?,
            }
        }
        Ok(())
    }
}

/// Splits at commas that are not inside a `( … )` value set.
fn split_requirements(selector: &str) -> Result<Vec<&str>, SyntaxError> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| SyntaxError::Requirement {
                    requirement: selector.to_owned(),
                    reason: "unbalanced ')'",
                })?
            }
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SyntaxError::Requirement {
            requirement: selector.to_owned(),
            reason: "unclosed '('",
        });
    }
    parts.push(&selector[start..]);
    if parts.len() == 1 && parts[0].trim().is_empty() {
        return Ok(Vec::new());
    }
    Ok(parts)
}

fn parse_requirement(text: &str) -> Result<Requirement, SyntaxError> {
    let req = text.trim();
    let invalid = |reason| SyntaxError::Requirement {
        requirement: req.to_owned(),
        reason,
    };
    if req.is_empty() {
        return Err(invalid("empty requirement (stray comma?)"));
    }
    if let Some(key) = req.strip_prefix('!') {
        let key = key.trim();
        check_key(key)?;
        return Ok(Requirement::DoesNotExist(key.to_owned()));
    }
    // Operators made of symbols; `!=` and `==` before `=`.
    for (op, build) in [
        ("!=", Requirement::NotEquals as fn(String, String) -> Requirement),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((key, value)) = req.split_once(op) {
            let (key, value) = (key.trim(), value.trim());
            check_key(key)?;
            check_value(value)?;
            return Ok(build(key.to_owned(), value.to_owned()));
        }
    }
    for (op, greater) in [(">", true), ("<", false)] {
        if let Some((key, value)) = req.split_once(op) {
            let (key, value) = (key.trim(), value.trim());
            check_key(key)?;
            let n = value
                .parse::<i64>()
                .map_err(|_| invalid("'>' and '<' need an integer"))?;
            return Ok(if greater {
                Requirement::GreaterThan(key.to_owned(), n)
            } else {
                Requirement::LessThan(key.to_owned(), n)
            });
        }
    }
    // Set-based: `key in (a,b)` / `key notin (a,b)`.
    if let Some(open) = req.find('(') {
        let head: Vec<&str> = req[..open].split_whitespace().collect();
        let [key, op] = head[..] else {
            return Err(invalid("expected `key in (values)` or `key notin (values)`"));
        };
        let body = req[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| invalid("text after ')'"))?;
        check_key(key)?;
        let values = body
            .split(',')
            .map(|v| {
                let v = v.trim();
                check_value(v).map(|()| v.to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?;
        return match op {
            "in" => Ok(Requirement::In(key.to_owned(), values)),
            "notin" => Ok(Requirement::NotIn(key.to_owned(), values)),
            _ => Err(invalid("the set operator must be `in` or `notin`")),
        };
    }
    if req.split_whitespace().count() > 1 {
        return Err(invalid(
            "expected one of =, ==, !=, in, notin, >, < between key and value",
        ));
    }
    check_key(req)?;
    Ok(Requirement::Exists(req.to_owned()))
}

/// A label or annotation key: an optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 characters (alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric).
pub fn check_key(key: &str) -> Result<(), SyntaxError> {
    let bad = |reason| SyntaxError::Key {
        key: key.to_owned(),
        reason,
    };
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() || prefix.len() > 253 {
            return Err(bad("the prefix before '/' must be 1 to 253 characters"));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !prefix.split('.').all(label_ok) {
            return Err(bad("the prefix before '/' must be a lower-case DNS subdomain"));
        }
    }
    if name.is_empty() {
        return Err(bad("the name must not be empty"));
    }
    if !is_qualified_name_part(name) {
        return Err(bad(
            "the name must be at most 63 characters: alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric",
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters of the same alphabet as a key's name.
pub fn check_value(value: &str) -> Result<(), SyntaxError> {
    if value.is_empty() || is_qualified_name_part(value) {
        Ok(())
    } else {
        Err(SyntaxError::Value {
            value: value.to_owned(),
            reason: "must be empty or at most 63 characters: alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric",
        })
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn matches(selector: &str, pairs: &[(&str, &str)]) -> bool {
        let l = labels(pairs);
        LabelSelector::parse(selector)
            .expect("valid selector")
            .matches(|k| l.get(k).map(String::as_str))
    }

    #[test]
    fn accepted_selectors_round_trip_to_canonical_form() {
        for (input, canonical) in [
            ("", ""),
            ("app=web", "app=web"),
            ("app==web", "app=web"),
            ("app != web", "app!=web"),
            ("runtime=long,cost=expensive", "runtime=long,cost=expensive"),
            ("!experimental", "!experimental"),
            ("kured.dev/blocking", "kured.dev/blocking"),
            ("tier in (db, cache)", "tier in (db,cache)"),
            ("tier notin (web),app=x", "tier notin (web),app=x"),
            ("replicas>2", "replicas>2"),
            ("replicas<2", "replicas<2"),
            ("app=", "app="),
        ] {
            let parsed = LabelSelector::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(parsed.to_string(), canonical, "{input:?}");
        }
    }

    #[test]
    fn rejected_selectors_name_the_problem() {
        for input in [
            "...",
            "app=web,",
            ",app=web",
            "app=web!",
            "-app=web",
            "app=-web",
            "tier in (db",
            "tier in db)",
            "tier within (db)",
            "a b",
            "Example.COM/app=web",
            "replicas>two",
            "\"\"",
            &format!("app={}", "x".repeat(64)),
        ] {
            assert!(
                LabelSelector::parse(input).is_err(),
                "{input:?} should be rejected"
            );
        }
    }

    #[test]
    fn matching_follows_each_operator() {
        assert!(matches("", &[]));
        assert!(matches("app=web", &[("app", "web")]));
        assert!(!matches("app=web", &[("app", "db")]));
        assert!(matches("app!=web", &[]));
        assert!(matches("app", &[("app", "")]));
        assert!(!matches("!app", &[("app", "")]));
        assert!(matches("tier in (db,cache)", &[("tier", "cache")]));
        assert!(!matches("tier in (db,cache)", &[]));
        assert!(matches("tier notin (db)", &[]));
        assert!(matches("n>2", &[("n", "3")]));
        assert!(!matches("n>2", &[("n", "x")]));
        assert!(matches("a=1,b=2", &[("a", "1"), ("b", "2")]));
        assert!(!matches("a=1,b=2", &[("a", "1")]));
    }

    #[test]
    fn keys_follow_qualified_name_rules() {
        assert!(check_key("weave.works/kured-node-lock").is_ok());
        assert!(check_key("node-role.kubernetes.io/control-plane").is_ok());
        assert!(check_key("a").is_ok());
        assert!(check_key("/a").is_err());
        assert!(check_key("a/").is_err());
        assert!(check_key("UPPER.example/a").is_err());
        assert!(check_key(&"k".repeat(64)).is_err());
    }
}
