//! `helm lint` and the values schema; every agent flag reachable through the values, and every
//! configuration key of upstream's chart accepted.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::render::{
    CHART, DEFAULT_ARGS, EVERY_FLAG, Helm, REPRESENTATIVE, agent_start, args, camel, env_json, kebab, keys,
    node_id_env, scalar, strings, yaml_file,
};

/// Flags the chart sets itself, from the release and the pod, rather than from a value.
const SET_BY_THE_CHART: [&str; 3] = ["node-id", "ds-name", "ds-namespace"];
/// Flags no value reaches: in a pod, the agent uses the pod's ServiceAccount (extraArgs can still
/// pass it).
const NOT_FOR_A_POD: [&str; 1] = ["kubeconfig"];
/// Configuration keys that choose how the sentinel is passed rather than mapping to one flag.
const SENTINEL_KEYS: [&str; 2] = ["rebootSentinel", "useRebootSentinelHostPath"];
/// The reboot window's keys, given as `KURED_*` variables so that `kured schedule` in the pod sees
/// them.
const WINDOW_KEYS: [&str; 4] = ["rebootDays", "startTime", "endTime", "timeZone"];

/// The `configuration` keys of upstream kured's chart (kubereboot/charts).
const UPSTREAM_CONFIGURATION_KEYS: [&str; 41] = [
    "useRebootSentinelHostPath",
    "metricsHost",
    "metricsPort",
    "lockTtl",
    "alertFilterRegexp",
    "alertFiringOnly",
    "alertFilterMatchOnly",
    "blockingPodSelector",
    "endTime",
    "lockAnnotation",
    "period",
    "forceReboot",
    "drainGracePeriod",
    "drainPodSelector",
    "drainDelay",
    "drainTimeout",
    "skipWaitForDeleteTimeout",
    "prometheusUrl",
    "rebootDays",
    "rebootSentinel",
    "rebootSentinelCommand",
    "rebootCommand",
    "rebootDelay",
    "rebootMethod",
    "rebootSignal",
    "slackChannel",
    "slackHookUrl",
    "slackUsername",
    "notifyUrl",
    "messageTemplateDrain",
    "messageTemplateReboot",
    "messageTemplateUncordon",
    "startTime",
    "timeZone",
    "annotateNodes",
    "lockReleaseDelay",
    "preferNoScheduleTaint",
    "logFormat",
    "preRebootNodeLabels",
    "postRebootNodeLabels",
    "concurrency",
];

/// The other top-level keys of upstream's chart, except podSecurityPolicy (PodSecurityPolicy left
/// Kubernetes in 1.25).
const UPSTREAM_TOP_LEVEL_KEYS: [&str; 26] = [
    "image",
    "revisionHistoryLimit",
    "updateStrategy",
    "maxUnavailable",
    "podAnnotations",
    "dsAnnotations",
    "extraArgs",
    "extraEnvVars",
    "configuration",
    "rbac",
    "serviceAccount",
    "containerSecurityContext",
    "resources",
    "hostNetwork",
    "metrics",
    "service",
    "livenessProbe",
    "readinessProbe",
    "podLabels",
    "priorityClassName",
    "tolerations",
    "affinity",
    "nodeSelector",
    "volumeMounts",
    "volumes",
    "initContainers",
];

#[test]
fn helm_lint_passes_and_the_schema_refuses_unknown_or_invalid_configuration() {
    let helm = Helm::new();
    for values in [
        &[][..],
        &["-f", REPRESENTATIVE, "--set", "metrics.create=false"][..],
        &["-f", EVERY_FLAG][..],
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend_from_slice(values);
        let out = helm
            .run(&args)
            .unwrap_or_else(|e| panic!("helm lint {values:?}: {e}"));
        assert!(out.contains("1 chart(s) linted, 0 chart(s) failed"), "{out}");
    }
    helm.assert_refuses(&["--set", "configuration.rebootMethd=signal"], "rebootMethd");
    helm.assert_refuses(
        &["--set", "configuration.rebootMethod=reboot"],
        "/configuration/rebootMethod",
    );
    let lint = helm
        .run(&["lint", CHART, "--set", "configuration.logFormat=yaml"])
        .expect_err("helm lint with an invalid logFormat");
    assert!(lint.contains("/configuration/logFormat"), "{lint}");
}

#[test]
fn every_agent_flag_is_reachable_through_the_values() {
    let chart = yaml_file("charts/kured/values.yaml");
    let chart_keys = keys(&chart["configuration"]);
    let mut agent = kured::config::Cli::command();
    agent.build();
    let flags: Vec<String> = agent
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|f| !matches!(*f, "help" | "version"))
        .map(str::to_owned)
        .collect();
    assert!(flags.len() > 40, "the agent's flags: {flags:?}");
    for flag in &flags {
        if SET_BY_THE_CHART.contains(&flag.as_str()) || NOT_FOR_A_POD.contains(&flag.as_str()) {
            continue;
        }
        assert!(
            chart_keys.contains(&camel(flag)),
            "--{flag} has no configuration.{} in charts/kured/values.yaml",
            camel(flag)
        );
    }

    // Every flag key is set in values-every-flag.yaml, and renders to exactly what the file says.
    let every = yaml_file(EVERY_FLAG);
    let every = &every["configuration"];
    let mut expected_keys = chart_keys.clone();
    for key in SENTINEL_KEYS.iter().chain(&["notifyUrlSecret"]) {
        expected_keys.remove(*key);
    }
    assert_eq!(
        keys(every),
        expected_keys,
        "{EVERY_FLAG} sets every flag key of the chart"
    );

    let helm = Helm::new();
    let rendered = helm.template("kured", "kube-system", &["-f", EVERY_FLAG]);
    let container = rendered.container();
    let mut want_args = strings(&["--ds-name=kured", "--ds-namespace=kube-system"]);
    let mut want_env = vec![node_id_env()];
    for (key, value) in every.as_object().expect("a mapping") {
        let values: Vec<String> = match value {
            Value::Array(items) => items.iter().map(scalar).collect(),
            other => vec![scalar(other)],
        };
        if WINDOW_KEYS.contains(&key.as_str()) {
            let name = format!("KURED_{}", kebab(key).to_uppercase().replace('-', "_"));
            want_env.push(json!({ "name": name, "value": values.join(",") }));
        } else {
            want_args.extend(values.iter().map(|v| format!("--{}={v}", kebab(key))));
        }
    }
    let mut got_args = args(&container);
    got_args.sort();
    want_args.sort();
    assert_eq!(got_args, want_args);
    let got_env = env_json(&container);
    let got_env: BTreeSet<String> = got_env
        .as_array()
        .expect("a list")
        .iter()
        .map(Value::to_string)
        .collect();
    let want_env: BTreeSet<String> = want_env.iter().map(Value::to_string).collect();
    assert_eq!(got_env, want_env);

    // Together with the sentinel file (default values) and what the chart sets, every flag.
    let default_args = args(&helm.template("kured", "kube-system", &[]).container());
    let mut reached: BTreeSet<String> = container
        .env
        .iter()
        .flatten()
        .map(|e| {
            e.name
                .trim_start_matches("KURED_")
                .to_lowercase()
                .replace('_', "-")
        })
        .collect();
    for arg in container.args.iter().flatten().chain(&default_args) {
        let flag = arg.trim_start_matches("--");
        reached.insert(flag.split_once('=').map_or(flag, |(f, _)| f).to_owned());
    }
    let missing: Vec<&String> = flags
        .iter()
        .filter(|f| !reached.contains(*f) && !NOT_FOR_A_POD.contains(&f.as_str()))
        .collect();
    assert!(missing.is_empty(), "flags no value reaches: {missing:?}");

    agent_start(&container).unwrap_or_else(|e| panic!("the agent refuses {EVERY_FLAG}'s flags: {e}"));
}

#[test]
fn upstreams_values_keys_are_accepted() {
    let chart = yaml_file("charts/kured/values.yaml");
    let top = keys(&chart);
    for key in UPSTREAM_TOP_LEVEL_KEYS {
        assert!(
            top.contains(key),
            "{key} is missing from charts/kured/values.yaml"
        );
    }
    let configuration = keys(&chart["configuration"]);
    for key in UPSTREAM_CONFIGURATION_KEYS {
        assert!(
            configuration.contains(key),
            "configuration.{key} is missing from charts/kured/values.yaml"
        );
    }

    // Upstream's defaults, which spell "unset" differently (0, "text", "", an empty map), render
    // flags the agent takes with the same meaning as its own defaults.
    let helm = Helm::new();
    let rendered = helm.template(
        "kured",
        "kube-system",
        &[
            "--set-json",
            r#"configuration={"lockTtl":0,"lockReleaseDelay":0,"drainDelay":0,"drainGracePeriod":"","skipWaitForDeleteTimeout":"","rebootSignal":"","rebootSentinel":"","concurrency":1,"logFormat":"text","rebootCommand":"/bin/systemctl reboot","metricsPort":8080,"useRebootSentinelHostPath":true}"#,
            "--set-json",
            "initContainers={}",
            "--set-json",
            "extraEnvVars=null",
            "--set-json",
            "serviceAccount.name=null",
        ],
    );
    let container = rendered.container();
    assert_eq!(
        args(&container),
        strings(
            &[
                &DEFAULT_ARGS[..],
                &[
                    "--reboot-command=/bin/systemctl reboot",
                    "--drain-delay=0",
                    "--lock-ttl=0",
                    "--lock-release-delay=0",
                    "--concurrency=1",
                    "--log-format=text",
                ],
            ]
            .concat()
        )
    );
    assert_eq!(rendered.pod().init_containers, None);
    agent_start(&container).unwrap_or_else(|e| panic!("the agent refuses upstream's defaults: {e}"));
}
