//! `--notify-url` and the deprecated Slack flags, made into notification targets.

use super::{ConfigError, NotifyArgs, NotifyUrlArgs, invalid, non_empty, parse_url, strip_quotes};
use crate::notify::Target;

impl NotifyUrlArgs {
    /// The notification targets: each `--notify-url`, or else the deprecated `--slack-hook-url`
    /// (with upstream's warnings). A URL that cannot be used is an error (`kured notify`).
    pub fn targets(&self, warnings: &mut Vec<String>) -> Result<Vec<Target>, ConfigError> {
        self.collect(warnings, None)
    }

    /// The agent's targets: as [`NotifyUrlArgs::targets`], except that a URL that cannot be used
    /// does not stop the agent. It becomes a [`Target::unusable`], whose every notification
    /// fails and is counted, and its error (the URL redacted) goes to `errors` to be logged at
    /// start.
    pub fn agent_targets(&self, warnings: &mut Vec<String>, errors: &mut Vec<String>) -> Vec<Target> {
        match self.collect(warnings, Some(errors)) {
            Ok(targets) => targets,
            // `collect` with a place for errors returns none.
            Err(e) => {
                errors.push(e.to_string());
                Vec::new()
            }
        }
    }

    fn collect(
        &self,
        warnings: &mut Vec<String>,
        mut errors: Option<&mut Vec<String>>,
    ) -> Result<Vec<Target>, ConfigError> {
        let username = strip_quotes(&self.slack_username);
        let channel = non_empty(&self.slack_channel);
        // A URL that cannot be used: an error, or with `errors`, a target that fails.
        let mut unusable =
            |labelled_as: &str, shown: String, error: ConfigError, reason: String| match &mut errors {
                Some(errors) => {
                    errors.push(error.to_string());
                    Ok(Target::unusable(labelled_as, shown, reason))
                }
                None => Err(error),
            };
        let mut targets = Vec::new();
        for url in self.notify_url.iter().filter_map(|u| non_empty(u)) {
            let target = match Target::parse(url) {
                Ok(target) => target.with_slack_defaults(username, channel),
                Err(e) => {
                    let shown = redact_url(url);
                    let reason = e.to_string();
                    unusable(url, shown.clone(), invalid("notify-url", &shown, e), reason)?
                }
            };
            targets.push(target);
        }
        let Some(hook) = non_empty(&self.slack_hook_url) else {
            return Ok(targets);
        };
        if !targets.is_empty() {
            warnings
                .push("both --notify-url and --slack-hook-url are set; only --notify-url is used".to_owned());
            return Ok(targets);
        }
        warnings.push("--slack-hook-url is deprecated; use --notify-url".to_owned());
        let url = parse_url("slack-hook-url", hook, true).and_then(|url| {
            if matches!(url.scheme(), "http" | "https") {
                Ok(url)
            } else {
                Err(invalid(
                    "slack-hook-url",
                    &redact_url(hook),
                    "expected an https:// webhook URL",
                ))
            }
        });
        let target = match url {
            Ok(url) => Target::slack_hook(url, username, channel),
            // Counted under `slack`, the service the flag is for.
            Err(e) => {
                let reason = e.to_string();
                unusable("slack://", redact_url(hook), e, reason)?
            }
        };
        Ok(vec![target])
    }
}

impl NotifyArgs {
    /// The targets to test, and warnings to show; at least one target.
    pub fn targets(&self) -> Result<(Vec<Target>, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let targets = self.urls.targets(&mut warnings)?;
        if targets.is_empty() {
            return Err(invalid(
                "notify-url",
                "",
                "expected at least one notification URL (or --slack-hook-url)",
            ));
        }
        Ok((targets, warnings))
    }
}

/// A URL fit for a log line: scheme and host only. Notification URLs carry their secrets in the
/// user-info, the path or the query (Slack webhooks, Teams workflow signatures, SMTP passwords),
/// and for some services in the host, which is then left out too.
pub fn redact_url(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(u) => match u.host_str() {
            Some(_) if crate::notify::services::host_is_secret(u.scheme()) => {
                format!("{}://<redacted>", u.scheme())
            }
            Some(host) if !u.cannot_be_a_base() => format!("{}://{host}/<redacted>", u.scheme()),
            _ => format!("{}:<redacted>", u.scheme()),
        },
        Err(_) => match value.split_once("://") {
            Some((scheme, _))
                if !scheme.is_empty()
                    && scheme.len() < 32
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
            {
                format!("{scheme}://<redacted>")
            }
            _ => "<redacted>".to_owned(),
        },
    }
}
