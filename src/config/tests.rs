use std::ffi::OsString;
use std::time::Duration;

use super::agent::lock_ttl_warning;
use super::env::{Meeting, Override, env_overrides, with_variables};
use super::*;
use crate::duration::GoDuration;
use crate::notify::services::slack::{Slack, SlackDest};
use crate::reboot::{HostNamespace, Rebooter};
use crate::sentinel::Sentinel;
use crate::window::RebootWindow;

/// Serialises the tests that build the command line: clap reads `KURED_*` variables when it
/// builds the command, and one test sets them.
static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn parse(args: &[&str]) -> Result<Config, String> {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cli =
        Cli::parse_from(std::iter::once("kured").chain(args.iter().copied())).map_err(|e| e.to_string())?;
    cli.agent.validate().map_err(|e| e.to_string())
}

fn ok(args: &[&str]) -> Config {
    parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn err(args: &[&str]) -> String {
    match parse(args) {
        Ok(c) => panic!("{args:?} should be rejected, got {c:?}"),
        Err(e) => e,
    }
}

fn env_name(flag: &str) -> String {
    format!("KURED_{}", flag.to_uppercase().replace('-', "_"))
}

#[test]
fn every_flag_has_its_kured_env_twin() {
    let mut cmd = Cli::command();
    cmd.build();
    let mut flags: Vec<&str> = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        assert_eq!(env.as_deref(), Some(env_name(long).as_str()), "--{long}");
        flags.push(long);
    }
    flags.sort_unstable();
    let mut expected = vec![
        "node-id",
        "period",
        "reboot-sentinel",
        "reboot-sentinel-command",
        "reboot-method",
        "reboot-command",
        "reboot-signal",
        "reboot-delay",
        "force-reboot",
        "drain-delay",
        "drain-timeout",
        "drain-grace-period",
        "drain-pod-selector",
        "skip-wait-for-delete-timeout",
        "ds-namespace",
        "ds-name",
        "lock-annotation",
        "lock-backend",
        "lock-ttl",
        "lock-release-delay",
        "concurrency",
        "concurrency-per-label",
        "prometheus-url",
        "alert-filter-regexp",
        "alert-filter-match-only",
        "alert-firing-only",
        "blocking-pod-selector",
        "post-reboot-gate",
        "post-reboot-settle",
        "post-reboot-timeout",
        "post-reboot-alert-filter",
        "reboot-loop-window",
        "reboot-loop-backoff",
        "prefer-no-schedule-taint",
        "reboot-days",
        "start-time",
        "end-time",
        "time-zone",
        "annotate-nodes",
        "pre-reboot-node-labels",
        "post-reboot-node-labels",
        "notify-url",
        "slack-hook-url",
        "slack-username",
        "slack-channel",
        "message-template-drain",
        "message-template-reboot",
        "message-template-uncordon",
        "log-format",
        "metrics-host",
        "metrics-port",
        "kubeconfig",
    ];
    expected.sort_unstable();
    assert_eq!(flags, expected);
}

#[test]
fn upstream_defaults() {
    let c = ok(&["--node-id=n1"]);
    assert_eq!(c.period, Duration::from_secs(3600));
    assert_eq!(c.sentinel, Sentinel::File("/var/run/reboot-required".into()));
    assert_eq!(
        c.rebooter.describe(),
        Rebooter::command("/bin/systemctl reboot", HostNamespace::pid1())
            .unwrap()
            .describe()
    );
    assert_eq!(c.reboot_delay, Duration::ZERO);
    assert!(!c.force_reboot);
    assert_eq!(c.drain_delay, Duration::ZERO);
    assert_eq!(c.drain.timeout, None);
    assert_eq!(c.drain.grace_period, None);
    assert!(c.drain.pod_selector.is_empty());
    assert_eq!(c.drain.skip_wait_for_delete_timeout, None);
    assert_eq!(
        (c.lock_object.namespace.as_str(), c.lock_object.name.as_str()),
        ("kube-system", "kured")
    );
    assert_eq!(c.lock_object.annotation, "weave.works/kured-node-lock");
    assert_eq!(
        (c.lock.ttl, c.lock.release_delay, c.lock.concurrency),
        (GoDuration::ZERO, Duration::ZERO, 1)
    );
    assert!(c.blockers.prometheus_url.is_none() && c.blockers.alert_filter.regexp.is_none());
    assert!(!c.blockers.alert_filter.match_only && !c.blockers.alert_filter.firing_only);
    assert!(c.blockers.pod_selectors.is_empty() && c.prefer_no_schedule_taint.is_none());
    assert_eq!(
        c.window.to_string(),
        RebootWindow::new(
            &["su", "mo", "tu", "we", "th", "fr", "sa"],
            "0:00",
            "23:59:59",
            "UTC"
        )
        .unwrap()
        .to_string()
    );
    assert!(!c.annotate_nodes);
    assert!(c.pre_reboot_node_labels.is_empty() && c.post_reboot_node_labels.is_empty());
    assert!(c.notify_targets.is_empty());
    let notify = Cli::parse_from(["kured"]).expect("parses").agent.notify;
    assert_eq!(
        (notify.slack_username.as_str(), notify.slack_channel.as_str()),
        ("kured", "")
    );
    assert_eq!(c.message_template_drain, "Draining node %s");
    assert_eq!(c.message_template_reboot, "Rebooting node %s");
    assert_eq!(
        c.message_template_uncordon,
        "Node %s rebooted & uncordoned successfully!"
    );
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.metrics_addr, "[::]:8080");
    assert!(c.warnings.is_empty());
}

/// The argument list of upstream's kured-ds.yaml, commented out there, exactly as written in
/// the manifest's `command:` list (no shell, so `""` arrives as two quote characters).
#[test]
fn upstream_manifest_argument_lines_parse_to_their_documented_values() {
    let lines = [
        "--reboot-sentinel=/sentinel/reboot-required",
        "--force-reboot=false",
        "--drain-grace-period=-1",
        "--skip-wait-for-delete-timeout=0",
        "--drain-delay=0",
        "--drain-timeout=0",
        "--drain-pod-selector=\"\"",
        "--period=1h",
        "--ds-namespace=kube-system",
        "--ds-name=kured",
        "--lock-annotation=weave.works/kured-node-lock",
        "--lock-ttl=0",
        "--prometheus-url=http://prometheus.monitoring.svc.cluster.local",
        "--alert-filter-regexp=^RebootRequired$",
        "--alert-filter-match-only=false",
        "--alert-firing-only=false",
        "--prefer-no-schedule-taint=\"\"",
        "--reboot-sentinel-command=\"\"",
        "--reboot-method=command",
        "--reboot-signal=39",
        "--slack-hook-url=https://hooks.slack.com/...",
        "--slack-username=prod",
        "--slack-channel=alerting",
        "--notify-url=\"\"",
        "--message-template-drain=Draining node %s",
        "--message-template-reboot=Rebooting node %s",
        "--message-template-uncordon=Node %s rebooted & uncordoned successfully!",
        "--blocking-pod-selector=runtime=long,cost=expensive",
        "--blocking-pod-selector=name=temperamental",
        "--reboot-days=sun,mon,tue,wed,thu,fri,sat",
        "--reboot-delay=90s",
        "--start-time=0:00",
        "--end-time=23:59:59",
        "--time-zone=UTC",
        "--annotate-nodes=false",
        "--lock-release-delay=30m",
        "--log-format=text",
        "--metrics-host=\"\"",
        "--metrics-port=8080",
        "--concurrency=1",
    ];
    let mut args = vec!["--node-id=n1"];
    args.extend(lines);
    let c = ok(&args);
    assert_eq!(c.sentinel, Sentinel::File("/sentinel/reboot-required".into()));
    assert!(!c.force_reboot);
    assert_eq!(c.drain.grace_period, None);
    assert_eq!(c.drain.skip_wait_for_delete_timeout, None);
    assert_eq!((c.drain_delay, c.drain.timeout), (Duration::ZERO, None));
    assert!(c.drain.pod_selector.is_empty());
    assert_eq!(c.period, Duration::from_secs(3600));
    assert_eq!(c.lock.ttl, GoDuration::ZERO);
    assert_eq!(
        c.blockers.prometheus_url.as_ref().map(|u| u.as_str()),
        Some("http://prometheus.monitoring.svc.cluster.local/")
    );
    assert!(
        c.blockers
            .alert_filter
            .regexp
            .as_ref()
            .is_some_and(|r| r.is_match("RebootRequired") && !r.is_match("XRebootRequired"))
    );
    assert!(c.prefer_no_schedule_taint.is_none());
    assert!(c.rebooter.describe().contains("/bin/systemctl reboot"));
    // `--notify-url=""` is no URL, so the deprecated hook URL is used, as given.
    let [target] = c.notify_targets.as_slice() else {
        panic!("one target: {:?}", c.notify_targets)
    };
    let slack = target.service::<Slack>().expect("a Slack target");
    assert_eq!(
        slack.dest,
        SlackDest::Webhook(url::Url::parse("https://hooks.slack.com/...").expect("a URL"))
    );
    assert_eq!(
        (slack.username.as_deref(), slack.channel.as_deref()),
        (Some("prod"), Some("alerting"))
    );
    let selectors: Vec<String> = c.blockers.pod_selectors.iter().map(ToString::to_string).collect();
    assert_eq!(selectors, ["runtime=long,cost=expensive", "name=temperamental"]);
    assert_eq!(c.reboot_delay, Duration::from_secs(90));
    assert_eq!(c.lock.release_delay, Duration::from_secs(30 * 60));
    assert_eq!(c.metrics_addr, "[::]:8080");
    assert_eq!(c.lock.concurrency, 1);
    assert_eq!(c.warnings, ["--slack-hook-url is deprecated; use --notify-url"]);

    // The manifest's last selector line, `--blocking-pod-selector=...`, is a placeholder for
    // "add more"; taken literally it is not a selector, and says so.
    let e = err(&["--node-id=n1", "--blocking-pod-selector=..."]);
    assert!(e.contains("--blocking-pod-selector \"...\""), "{e}");
}

#[test]
fn flags_and_their_env_twins_give_the_same_config() {
    // Each flag set on the command line, then the same value through its environment
    // variable (clap's env support, exercised via Command::try_get_matches_from with env).
    let cases: &[(&str, &str)] = &[
        ("period", "10m"),
        ("reboot-days", "mo,tu"),
        ("start-time", "22:00"),
        ("end-time", "04:00"),
        ("time-zone", "Europe/Berlin"),
        ("concurrency", "3"),
        ("force-reboot", "true"),
        ("annotate-nodes", "1"),
        ("drain-grace-period", "-1"),
        ("pre-reboot-node-labels", "a=1,b=2"),
        ("blocking-pod-selector", "app=db,tier in (x,y)"),
        ("concurrency-per-label", "topology.kubernetes.io/zone=1,rack=2"),
    ];
    for (flag, value) in cases {
        let from_flag = ok(&["--node-id=n1", &format!("--{flag}={value}")]);
        let var = env_name(flag);
        // clap reads an argument's environment variable when the command is built.
        let from_env = temp_env(&var, value, || {
            Cli::parse_from(["kured", "--node-id=n1"])
                .expect("parses")
                .agent
                .validate()
                .expect("validates")
        });
        assert_eq!(
            format!("{from_flag:?}"),
            format!("{from_env:?}"),
            "--{flag} vs {var}"
        );
    }
}

#[test]
fn liveness_bounds_follow_the_drain_and_reboot_flags() {
    use crate::reboot::{COMMAND_TIMEOUT, EFFECT_LIMIT};
    let limits = ok(&[
        "--node-id=n1",
        "--drain-timeout=30m",
        "--drain-delay=1m",
        "--reboot-delay=2m",
    ])
    .phase_limits;
    assert_eq!(limits.drain, Some(Duration::from_secs(33 * 60)));
    assert!(limits.reboot > Some(COMMAND_TIMEOUT + EFFECT_LIMIT), "{limits:?}");
    let limits = ok(&["--node-id=n1", "--reboot-method=signal"]).phase_limits;
    assert_eq!(limits.drain, None, "no --drain-timeout: no bound");
    assert_eq!(limits.reboot, Some(EFFECT_LIMIT));
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// The overrides `args` meets with the variables `vars` set, found as `Cli::parse_from` does.
fn overrides(args: &[&str], vars: &[(&str, &str)]) -> Vec<Override> {
    let command = Cli::command();
    let matches = command
        .clone()
        .try_get_matches_from(os(args))
        .expect("valid arguments");
    env_overrides(&command, &matches, |name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| OsString::from(v))
    })
}

#[test]
fn a_variable_set_beside_its_flag_meets_it_as_upstream_has_them_meet() {
    let found = overrides(
        &[
            "kured",
            "--period=10m",
            "--reboot-days",
            "mo",
            "--reboot-days=tu",
            "--blocking-pod-selector=app=batch,tier=db",
            "--post-reboot-node-labels=kured=done",
            "--ds-name=kured",
        ],
        &[
            ("KURED_PERIOD", "5m"),
            ("KURED_REBOOT_DAYS", "mo,tu"),
            ("KURED_BLOCKING_POD_SELECTOR", "app=other"),
            ("KURED_POST_REBOOT_NODE_LABELS", "zone=a"),
            ("KURED_DRAIN_DELAY", "1m"),
            ("KURED_DS_NAME", ""),
        ],
    );
    let found: Vec<_> = found
        .iter()
        .map(|o| (o.long.as_str(), o.meeting, o.warning()))
        .collect();
    assert_eq!(
        found,
        [
            (
                "period",
                Meeting::VariableWins,
                Some(
                    "both KURED_PERIOD=\"5m\" and --period=\"10m\" are set; the variable's value is used, \
                     as in upstream kured"
                        .to_owned()
                )
            ),
            (
                "blocking-pod-selector",
                Meeting::FlagWins,
                Some(
                    "both KURED_BLOCKING_POD_SELECTOR=\"app=other\" and \
                     --blocking-pod-selector=\"app=batch,tier=db\" are set; the flag's values are used: \
                     upstream kured never reads this variable"
                        .to_owned()
                )
            ),
            // The same days, written once as a list: nothing to warn about.
            ("reboot-days", Meeting::Appended, None),
            (
                "post-reboot-node-labels",
                Meeting::Appended,
                Some(
                    "both KURED_POST_REBOOT_NODE_LABELS=\"zone=a\" and \
                     --post-reboot-node-labels=\"kured=done\" are set; the variable's values are added \
                     to the flag's, as in upstream kured"
                        .to_owned()
                )
            ),
        ],
        "a variable without its flag (drain delay) or empty (ds name) meets nothing"
    );
    let subcommand = overrides(
        &["kured", "status", "--ds-namespace=a"],
        &[("KURED_DS_NAMESPACE", "b")],
    );
    assert_eq!(
        subcommand.len(),
        1,
        "a subcommand's flags are found too: {subcommand:?}"
    );
}

#[test]
fn a_secret_flag_met_by_its_variable_is_named_without_its_values() {
    let found = overrides(
        &["kured", "--prometheus-url=http://u:pa55@prom:9090"],
        &[("KURED_PROMETHEUS_URL", "http://u:other-pa55@prom:9090")],
    );
    let warning = found.first().and_then(Override::warning).expect("a warning");
    assert!(!warning.contains("pa55"), "{warning}");
    assert!(
        warning.starts_with("both KURED_PROMETHEUS_URL and --prometheus-url are set"),
        "{warning}"
    );
}

#[test]
fn the_variables_are_applied_to_the_command_line_in_each_form() {
    let found = overrides(
        &[
            "kured",
            "--period",
            "10m",
            "--force-reboot",
            "--reboot-days=mo",
            "--notify-url=generic://a",
        ],
        &[
            ("KURED_PERIOD", "5m"),
            ("KURED_FORCE_REBOOT", "false"),
            ("KURED_REBOOT_DAYS", "tu,we"),
            ("KURED_NOTIFY_URL", "generic://b"),
        ],
    );
    // Flags with an optional value take it only after `=`: the argument after one stays.
    let args = os(&[
        "kured",
        "--period",
        "10m",
        "--force-reboot",
        "n2",
        "--reboot-days=mo",
        "--notify-url=generic://a",
        "--period=1m",
        "--",
        "--period=1s",
    ]);
    assert_eq!(
        with_variables(&args, &found),
        os(&[
            "kured",
            "n2",
            "--reboot-days=mo",
            "--notify-url=generic://a",
            "--reboot-days=tu,we",
            "--",
            "--period=1s"
        ])
    );
}

/// Runs `f` with one environment variable set, holding the lock that `parse` takes.
fn temp_env<T>(var: &str, value: &str, f: impl FnOnce() -> T) -> T {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Edition 2024 makes set_var unsafe because another thread may read the environment
    // at the same time; in this module only these tests touch it, under the lock above.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(var, value)
    };
    let out = f();
    #[allow(unsafe_code)]
    unsafe {
        std::env::remove_var(var)
    };
    out
}

#[test]
fn list_flags_take_comma_separated_and_repeated_forms() {
    let a = ok(&["--node-id=n", "--reboot-days=mo,tu", "--reboot-days=we"]);
    let b = ok(&["--node-id=n", "--reboot-days=mo,tu,we"]);
    assert_eq!(a.window.to_string(), b.window.to_string());
    let c = ok(&[
        "--node-id=n",
        "--post-reboot-node-labels=a=1",
        "--post-reboot-node-labels=b=2,c=3",
    ]);
    let keys: Vec<&str> = c.post_reboot_node_labels.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    // Selectors contain commas, so --blocking-pod-selector is repeated, never split.
    let d = ok(&[
        "--node-id=n",
        "--blocking-pod-selector=a=1,b=2",
        "--blocking-pod-selector=c",
    ]);
    assert_eq!(d.blockers.pod_selectors.len(), 2);
    let e = ok(&[
        "--node-id=n",
        "--concurrency-per-label=topology.kubernetes.io/zone=1,rack=2",
        "--concurrency-per-label=example.com/row=10",
    ]);
    let limits: Vec<(&str, u32)> = e.lock.per_label.iter().map(|l| (l.key.as_str(), l.max)).collect();
    assert_eq!(
        limits,
        [
            ("topology.kubernetes.io/zone", 1),
            ("rack", 2),
            ("example.com/row", 10)
        ]
    );
    assert_eq!(ok(&["--node-id=n"]).lock.per_label, []);
}

#[test]
fn bad_values_name_the_flag_the_value_and_what_is_expected() {
    for (args, needle) in [
        (&["--reboot-days=funday"][..], "--reboot-days"),
        (&["--start-time=25:00"], "--start-time \"25:00\""),
        (&["--end-time=9:30am"], "--end-time \"9:30am\""),
        (&["--time-zone=Mars/Olympus"], "--time-zone \"Mars/Olympus\""),
        (&["--drain-pod-selector=a b"], "--drain-pod-selector \"a b\""),
        (
            &["--blocking-pod-selector=app=a=b"],
            "--blocking-pod-selector \"app=a=b\"",
        ),
        (&["--alert-filter-regexp=("], "--alert-filter-regexp \"(\""),
        (&["--reboot-command='unbalanced"], "--reboot-command"),
        (&["--reboot-sentinel-command=\"x"], "--reboot-sentinel-command"),
        (
            &["--reboot-sentinel=relative/path"],
            "--reboot-sentinel \"relative/path\"",
        ),
        (
            &["--prometheus-url=prometheus:9090"],
            "--prometheus-url \"prometheus:<redacted>\"",
        ),
        (
            &["--reboot-method=signal", "--reboot-signal=9"],
            "--reboot-signal \"9\"",
        ),
        (
            &["--reboot-method=signal", "--reboot-signal=65"],
            "--reboot-signal \"65\"",
        ),
        (&["--concurrency=0"], "--concurrency \"0\""),
        (&["--period=0"], "--period \"0s\""),
        (&["--lock-ttl=-1s"], "--lock-ttl \"-1s\""),
        (
            &["--pre-reboot-node-labels=novalue"],
            "--pre-reboot-node-labels \"novalue\"",
        ),
        (
            &["--prefer-no-schedule-taint=Bad Taint"],
            "--prefer-no-schedule-taint \"Bad Taint\"",
        ),
        (&["--lock-annotation=a/b/c"], "--lock-annotation \"a/b/c\""),
        (
            &["--concurrency-per-label=zone"],
            "--concurrency-per-label \"zone\": expected KEY=N",
        ),
        (&["--concurrency-per-label==1"], "--concurrency-per-label \"=1\""),
        (
            &["--concurrency-per-label=Bad Key=1"],
            "--concurrency-per-label \"Bad Key=1\"",
        ),
        (
            &["--concurrency-per-label=zone=0"],
            "--concurrency-per-label \"zone=0\": expected KEY=N with N an integer of at least 1",
        ),
        (
            &["--concurrency-per-label=zone=-1"],
            "--concurrency-per-label \"zone=-1\"",
        ),
        (
            &["--concurrency-per-label=zone=one"],
            "--concurrency-per-label \"zone=one\"",
        ),
        (
            &["--concurrency-per-label=zone=1", "--concurrency-per-label=zone=2"],
            "--concurrency-per-label \"zone=2\": expected each label key once",
        ),
        (
            &["--post-reboot-settle=5m", "--post-reboot-timeout=2m"],
            "--post-reboot-timeout \"2m0s\": expected a time-out longer than --post-reboot-settle=5m0s",
        ),
        (
            &["--post-reboot-settle=5m", "--post-reboot-timeout=5m"],
            "--post-reboot-timeout \"5m0s\"",
        ),
        (
            &["--post-reboot-alert-filter=["],
            "--post-reboot-alert-filter \"[\"",
        ),
        (
            &["--post-reboot-alert-filter=^Node"],
            "--post-reboot-alert-filter \"^Node\": needs --prometheus-url",
        ),
        (&["--post-reboot-settle=-1s"], "--post-reboot-settle \"-1s\""),
        (&["--reboot-loop-window=-1h"], "--reboot-loop-window \"-1h0m0s\""),
        (&["--reboot-loop-backoff=-1m"], "--reboot-loop-backoff \"-1m0s\""),
    ] {
        let mut full = vec!["--node-id=n1"];
        full.extend(args);
        let e = err(&full);
        assert!(e.contains(needle), "{args:?}: {e:?} does not contain {needle:?}");
        assert!(!e.contains('\n'), "{args:?}: one line, got {e:?}");
    }
    // Syntax errors found by clap itself name the flag and value too.
    for (args, needle) in [
        (&["--period=1d"][..], "'1d' for '--period"),
        (&["--reboot-method=reboot"], "'reboot' for '--reboot-method"),
        (&["--force-reboot=yes"], "'yes' for '--force-reboot"),
        (&["--metrics-port=99999"], "'99999' for '--metrics-port"),
    ] {
        let mut full = vec!["--node-id=n1"];
        full.extend(args);
        let e = err(&full);
        assert!(e.contains(needle), "{args:?}: {e:?}");
    }
    assert!(err(&[]).contains("--node-id"));
}

#[test]
fn an_invalid_prometheus_url_is_shown_without_its_credentials() {
    for (value, shown) in [
        ("http://admin:hunter2@prom etheus:9090", "\"http://<redacted>\""),
        ("admin:hunter2@prometheus:9090", "\"admin:<redacted>\""),
        ("https://user:hunter2@prom:99999/", "\"https://<redacted>\""),
    ] {
        let e = err(&["--node-id=n1", &format!("--prometheus-url={value}")]);
        assert!(
            e.starts_with(&format!("invalid --prometheus-url {shown}")),
            "{value}: {e}"
        );
        assert!(!e.contains("hunter2"), "{value}: {e}");
    }
    // A valid URL keeps its credentials for the requests, which send them as basic auth.
    let c = ok(&[
        "--node-id=n1",
        "--prometheus-url=http://admin:hunter2@prometheus:9090",
    ]);
    assert_eq!(c.blockers.prometheus_url.unwrap().password(), Some("hunter2"));
}

#[test]
fn differing_pre_and_post_label_keys_warn_as_upstream() {
    let c = ok(&[
        "--node-id=n",
        "--pre-reboot-node-labels=a=1",
        "--post-reboot-node-labels=b=1",
    ]);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let same = ok(&[
        "--node-id=n",
        "--pre-reboot-node-labels=a=1",
        "--post-reboot-node-labels=a=2",
    ]);
    assert!(same.warnings.is_empty());
}

#[test]
fn notify_and_slack_urls_are_never_shown_with_their_secrets() {
    let hook = "https://hooks.slack.com/services/T0000/B0000/XXXXSECRET";
    assert_eq!(redact_url(hook), "https://hooks.slack.com/<redacted>");
    assert_eq!(
        redact_url("smtp://user:hunter2@mail:587/?to=a@b"),
        "smtp://mail/<redacted>"
    );
    assert!(!redact_url("slack://xoxb-SECRET@channel").contains("SECRET"));
    assert!(!redact_url("teams://not a url SECRET").contains("SECRET"));
    // Pushbullet's token and Pushover's user key are the URL's host.
    assert_eq!(
        redact_url("pushbullet://o.SECRETSECRETSECRETSECRETSECRET12/#ops"),
        "pushbullet://<redacted>"
    );
    assert_eq!(
        redact_url("Pushover://shoutrrr:SECRET@SECRETUSER/?devices=a"),
        "pushover://<redacted>"
    );
}

#[test]
fn notify_urls_become_targets_with_the_slack_flags_as_defaults() {
    let hook = "slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook";
    let c = ok(&[
        "--node-id=n1",
        &format!("--notify-url=\"{hook}\""),
        "--notify-url=discord://tok@123",
        "--notify-url=''",
        "--slack-channel=#ops",
    ]);
    let schemes: Vec<&str> = c.notify_targets.iter().map(Target::scheme).collect();
    assert_eq!(schemes, ["slack", "discord"]);
    let slack = c.notify_targets[0]
        .service::<Slack>()
        .unwrap_or_else(|| panic!("not slack: {:?}", c.notify_targets[0]));
    assert_eq!(
        (slack.username.as_deref(), slack.channel.as_deref()),
        (Some("kured"), Some("#ops"))
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let both = ok(&[
        "--node-id=n1",
        &format!("--notify-url={hook}"),
        "--slack-hook-url=https://hooks.slack.com/services/T/B/X",
    ]);
    assert_eq!(both.notify_targets.len(), 1);
    assert_eq!(
        both.warnings,
        ["both --notify-url and --slack-hook-url are set; only --notify-url is used"]
    );
}

#[test]
fn bad_notify_urls_name_the_scheme_and_never_the_secret() {
    let cases = [
        (
            "nosuch://shoutrrr:SECRET@user",
            "unknown notification scheme \"nosuch\"",
            "unknown",
        ),
        (
            "slack://hook:SECRET@webhook",
            "slack: the token is not a Slack token",
            "slack",
        ),
        (
            "smtp://u:SECRET@mail.example.com/?to=a@b.c",
            "smtp: no from=… address given",
            "smtp",
        ),
        ("teams://SECRET@tenant/a/b", "teams: ", "teams"),
        (
            "slack://tok en@chan nel",
            "--notify-url \"slack://<redacted>\"",
            "slack",
        ),
        (
            "generic://host/x?template=SECRETTPL",
            "generic: parameter \"template\"",
            "generic",
        ),
    ];
    for (url, needle, scheme) in cases {
        // The agent starts: the URL is logged as an error and kept as a target whose
        // notifications fail, counted under its scheme; the good URL is kept as it is.
        let c = ok(&[
            "--node-id=n1",
            &format!("--notify-url={url}"),
            "--notify-url=discord://tok@123",
        ]);
        let [e] = c.errors.as_slice() else {
            panic!("{url}: one error expected, got {:?}", c.errors)
        };
        assert!(e.contains(needle), "{url}: {e}");
        assert!(e.starts_with("invalid --notify-url"), "{url}: {e}");
        assert!(!e.contains("SECRET") && !e.contains('\n'), "{url}: {e}");
        let schemes: Vec<&str> = c.notify_targets.iter().map(Target::scheme).collect();
        assert_eq!(schemes, [scheme, "discord"], "{url}");
        assert!(c.notify_targets[0].is_unusable() && !c.notify_targets[1].is_unusable());
        assert!(!c.notify_targets[0].shown().contains("SECRET"), "{url}");

        // `kured notify` refuses it.
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let cli = Cli::parse_from(["kured", "notify", &format!("--notify-url={url}")]).expect("parses");
        let Some(Command::Notify(args)) = cli.command else {
            panic!("not notify")
        };
        let e = args.targets().expect_err("a bad URL").to_string();
        assert!(e.contains(needle) && !e.contains("SECRET"), "{url}: {e}");
    }
    let c = ok(&["--node-id=n1", "--slack-hook-url=ftp://hooks.example.com/SECRET"]);
    assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
    assert!(
        c.errors[0].contains("--slack-hook-url") && !c.errors[0].contains("SECRET"),
        "{:?}",
        c.errors
    );
    let schemes: Vec<&str> = c.notify_targets.iter().map(Target::scheme).collect();
    assert_eq!(schemes, ["slack"]);
    assert!(c.notify_targets[0].is_unusable());
    assert!(ok(&["--node-id=n1"]).errors.is_empty());
}

#[test]
fn notify_subcommand_needs_a_url_and_reads_the_agent_flags() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cli = Cli::parse_from([
        "kured",
        "notify",
        "--notify-url=discord://tok@123",
        "--notify-url=generic+https://example.com/hook",
        "--message=hello",
    ])
    .expect("parses");
    let Some(Command::Notify(args)) = cli.command else {
        panic!("not notify")
    };
    let (targets, warnings) = args.targets().expect("targets");
    assert_eq!(
        (targets.len(), warnings.len(), args.message.as_str()),
        (2, 0, "hello")
    );

    let cli = Cli::parse_from(["kured", "notify"]).expect("parses");
    let Some(Command::Notify(args)) = cli.command else {
        panic!("not notify")
    };
    let e = args.targets().expect_err("no URL").to_string();
    assert!(e.contains("--notify-url"), "{e}");
}

#[test]
fn surrounding_quotes_are_stripped_once() {
    assert_eq!(strip_quotes("\"\""), "");
    assert_eq!(strip_quotes("'x'"), "x");
    assert_eq!(strip_quotes("\"x'"), "\"x'");
    assert_eq!(strip_quotes("\"\"x\"\""), "\"x\"");
    assert_eq!(strip_quotes("\""), "\"");
}

#[test]
fn help_output() {
    let help = Cli::command().term_width(100).render_long_help().to_string();
    insta::assert_snapshot!("help", help);
    let schedule = Cli::command()
        .term_width(100)
        .find_subcommand_mut("schedule")
        .expect("schedule")
        .render_long_help()
        .to_string();
    insta::assert_snapshot!("schedule_help", schedule);
    let notify = Cli::command()
        .term_width(100)
        .find_subcommand_mut("notify")
        .expect("notify")
        .render_long_help()
        .to_string();
    insta::assert_snapshot!("notify_help", notify);
    let pause = Cli::command()
        .term_width(100)
        .find_subcommand_mut("pause")
        .expect("pause")
        .render_long_help()
        .to_string();
    insta::assert_snapshot!("pause_help", pause);
}

#[test]
fn a_lock_ttl_that_can_run_out_while_the_node_is_out_is_warned_about() {
    let min = |m: u64| Duration::from_secs(60 * m);
    assert_eq!(
        lock_ttl_warning(None, Duration::ZERO, None),
        None,
        "no TTL: never expires"
    );
    assert_eq!(
        lock_ttl_warning(Some(min(30)), Duration::ZERO, Some(min(15))),
        None,
        "15m drain and a 10m reboot fit in 30m"
    );
    let short = lock_ttl_warning(Some(min(20)), min(1), Some(min(15))).expect("a warning");
    assert!(
        short.contains("--lock-ttl=20m0s") && short.contains("--drain-timeout=15m0s"),
        "{short}"
    );
    let unbounded = lock_ttl_warning(Some(min(60)), Duration::ZERO, None).expect("a warning");
    assert!(unbounded.contains("no --drain-timeout"), "{unbounded}");
}

#[test]
fn the_gate_is_off_unless_asked_for_and_the_loop_guard_on() {
    let c = ok(&["--node-id=n1"]);
    assert!(c.gate.is_none());
    let guard = c.loop_guard.expect("the loop guard is on by default");
    assert_eq!(guard.window, Duration::from_secs(3600));
    assert_eq!(guard.backoff, Duration::from_secs(1800));
    assert!(
        ok(&["--node-id=n1", "--reboot-loop-window=0"])
            .loop_guard
            .is_none()
    );

    for on in [
        &["--post-reboot-gate"][..],
        &["--post-reboot-gate=true"],
        &["--post-reboot-settle=30s"],
        &["--post-reboot-timeout=10m"],
        &[
            "--prometheus-url=http://prometheus:9090",
            "--post-reboot-alert-filter=^Node",
        ],
    ] {
        let mut args = vec!["--node-id=n1"];
        args.extend(on);
        assert!(ok(&args).gate.is_some(), "{on:?} turns the gate on");
    }
    let gate = ok(&[
        "--node-id=n1",
        "--post-reboot-settle=30s",
        "--post-reboot-timeout=10m",
        "--prometheus-url=http://prometheus:9090",
        "--post-reboot-alert-filter=^Node",
    ])
    .gate
    .expect("the gate");
    assert_eq!(gate.settle, Duration::from_secs(30));
    assert_eq!(gate.timeout, Some(Duration::from_secs(600)));
    assert_eq!(gate.alert_filter.map(|r| r.to_string()).as_deref(), Some("^Node"));
    assert!(gate.prometheus_url.is_some());
    assert!(ok(&["--node-id=n1", "--post-reboot-gate=false"]).gate.is_none());
}
