//! The Helm chart, `charts/kured`, rendered by a real helm (built by `testenv/build`):
//! - `helm lint` passes, and the values schema refuses a misspelt or invalid configuration key;
//! - every agent flag is reachable through `configuration.*` or set by the chart itself, and every
//!   configuration key of upstream's chart exists here;
//! - `helm template kured` with default values renders the objects of deploy/kured.yaml under the
//!   same names, with the same RBAC rules, and a DaemonSet that runs /usr/bin/kured as the
//!   manifest's does; another release gets a lock, a Role and flags of its own;
//! - with representative values (tests/helm/values-signal.yaml) the container's arguments and
//!   environment are exactly the expected ones, and the real binary accepts them: its start-up
//!   validation passes, and `kured schedule` with that environment shows the configured window;
//! - the reboot method and the sentinel choose the security context and the hostPath volume;
//!   notification URLs come from a value or a Secret, never both; a ServiceMonitor without the
//!   Prometheus Operator's API stops rendering with a message saying so;
//! - applied to the test cluster, in a scope of its own, the DaemonSets' pods run on the scope's kwok
//!   nodes, and each release's ServiceAccount may do what the agent needs and nothing more: its
//!   own lock, not another release's.
//!
//! Needs helm (`testenv/build`); the last test needs the test cluster (`scripts/testcluster up`)
//! and kubectl.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, SecurityContext};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use support::cli::agent_accepts;
use support::cluster::{kubeconfig_path, kubectl};
use support::objects::running_on;
use support::rbac::service_account_client;
use support::scope::Scope;
use support::access::{may, request};
use support::observer::{LOCK_ANNOTATION, held_by};

const CHART: &str = "charts/kured";
const REPRESENTATIVE: &str = "tests/helm/values-signal.yaml";
const EVERY_FLAG: &str = "tests/helm/values-every-flag.yaml";

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

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// helm and what it renders

/// helm as `testenv/build` builds it, with a home of its own (cache, configuration, data), and no
/// cluster unless a command names one.
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    fn new() -> Helm {
        let out = Command::new(repo().join("testenv/build"))
            .arg("--print-bin")
            .output()
            .expect("running testenv/build --print-bin");
        assert!(
            out.status.success(),
            "testenv/build --print-bin failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("helm");
        assert!(
            bin.is_file(),
            "{} does not exist: the chart tests need helm, which `testenv/build` builds (scripts/test runs it)",
            bin.display()
        );
        Helm {
            bin,
            home: tempfile::tempdir().expect("a temp dir"),
        }
    }

    /// Runs helm in the repository: its stdout, or everything it printed as the error.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let home = self.home.path();
        let out = Command::new(&self.bin)
            .current_dir(repo())
            .args(args)
            .env_clear()
            .env("HOME", home)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("KUBECONFIG", home.join("no-cluster"))
            .output()
            .expect("running helm");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// `helm template RELEASE charts/kured --namespace NAMESPACE ARGS…`, as YAML.
    fn template_yaml(&self, release: &str, namespace: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["template", release, CHART, "--namespace", namespace];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// The rendered objects; panics with helm's message if it refuses.
    fn template(&self, release: &str, namespace: &str, args: &[&str]) -> Rendered {
        let yaml = self
            .template_yaml(release, namespace, args)
            .unwrap_or_else(|e| panic!("helm template {release} {args:?}: {e}"));
        Rendered::parse(&yaml)
    }

    /// Asserts that helm refuses to render with `args`, saying `expected`.
    fn assert_refuses(&self, args: &[&str], expected: &str) {
        match self.template_yaml("kured", "kube-system", args) {
            Ok(yaml) => panic!("helm template {args:?} should fail, but rendered:\n{yaml}"),
            Err(message) => assert!(
                message.contains(expected),
                "helm template {args:?} should fail saying {expected:?}, but said:\n{message}"
            ),
        }
    }
}

/// Objects from a stream of YAML documents: helm's output or a shipped manifest.
struct Rendered {
    objects: Vec<Value>,
}

impl Rendered {
    fn parse(yaml: &str) -> Rendered {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("reading YAML: {e}\n{yaml}"));
        Rendered {
            objects: docs.into_iter().filter(|d| !d.is_null()).collect(),
        }
    }

    fn manifest(path: &str) -> Rendered {
        let text =
            std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        Rendered::parse(&text)
    }

    /// (kind, namespace, name) of every object.
    fn names(&self) -> BTreeSet<(String, String, String)> {
        self.objects
            .iter()
            .map(|o| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (
                    text(&o["kind"]),
                    text(&o["metadata"]["namespace"]),
                    text(&o["metadata"]["name"]),
                )
            })
            .collect()
    }

    fn has(&self, kind: &str) -> bool {
        self.objects.iter().any(|o| o["kind"] == kind)
    }

    fn raw(&self, kind: &str) -> &Value {
        let mut found = self.objects.iter().filter(|o| o["kind"] == kind);
        let object = found
            .next()
            .unwrap_or_else(|| panic!("no {kind} among {:?}", self.names()));
        assert!(found.next().is_none(), "more than one {kind}: {:?}", self.names());
        object
    }

    fn get<K: serde::de::DeserializeOwned>(&self, kind: &str) -> K {
        serde_json::from_value(self.raw(kind).clone()).unwrap_or_else(|e| panic!("reading the {kind}: {e}"))
    }

    fn daemonset(&self) -> DaemonSet {
        self.get("DaemonSet")
    }

    fn pod(&self) -> PodSpec {
        self.daemonset().spec.template.spec.expect("a pod template")
    }

    fn container(&self) -> Container {
        let pod = self.pod();
        assert_eq!(pod.containers.len(), 1, "one container");
        pod.containers[0].clone()
    }
}

fn args(container: &Container) -> Vec<String> {
    container.args.clone().unwrap_or_default()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The container's environment as JSON, in order.
fn env_json(container: &Container) -> Value {
    serde_json::to_value(container.env.clone().unwrap_or_default()).expect("env as JSON")
}

fn node_id_env() -> Value {
    json!({ "name": "KURED_NODE_ID", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } })
}

/// A YAML file of the repository as JSON.
fn yaml_file(path: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn keys(map: &Value) -> BTreeSet<String> {
    map.as_object().expect("a mapping").keys().cloned().collect()
}

fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn camel(kebab: &str) -> String {
    let mut parts = kebab.split('-');
    let mut out = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars);
        }
    }
    out
}

/// A scalar value as the chart passes it: strings as they are, numbers and booleans as YAML
/// writes them.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The real agent binary, given what the chart renders

/// A notification URL that stands in for the Secret's in the binary's checks.
const SECRET_NOTIFY_URL: &str = "slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook";

/// The container's environment as the kubelet would give it, with stand-ins for what comes from
/// the cluster: the node's name, the Secret's URL, a ConfigMap's value.
fn resolved_env(container: &Container) -> Vec<(String, String)> {
    container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (&e.value, &e.value_from) {
                (Some(v), None) => v.clone(),
                (None, Some(from))
                    if from
                        .field_ref
                        .as_ref()
                        .is_some_and(|f| f.field_path == "spec.nodeName") =>
                {
                    "node-1".to_owned()
                }
                (None, Some(from)) if from.secret_key_ref.is_some() => SECRET_NOTIFY_URL.to_owned(),
                (None, Some(from)) if from.config_map_key_ref.is_some() => "from-a-config-map".to_owned(),
                _ => panic!("an environment variable the test cannot stand in for: {e:?}"),
            };
            (e.name.clone(), value)
        })
        .collect()
}

/// Runs the agent with the container's command line and environment, and `--kubeconfig` pointing
/// nowhere: valid flags get it as far as reading the kubeconfig (exit 1); a bad flag, value or
/// variable stops it before that (exit 2, naming it), which is the error returned.
fn agent_start(container: &Container) -> Result<(), String> {
    assert_eq!(
        container.command.as_deref(),
        Some(&strings(&["/usr/bin/kured"])[..]),
        "the image's binary"
    );
    agent_accepts(args(container), resolved_env(container))
}

// ---------------------------------------------------------------------------------------------
// Lint, schema, coverage of the flags

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
        strings(&[
            "--ds-name=kured",
            "--ds-namespace=kube-system",
            "--reboot-sentinel=/sentinel/reboot-required",
            "--metrics-port=8080",
            "--reboot-command=/bin/systemctl reboot",
            "--drain-delay=0",
            "--lock-ttl=0",
            "--lock-release-delay=0",
            "--concurrency=1",
            "--log-format=text",
        ])
    );
    assert_eq!(rendered.pod().init_containers, None);
    agent_start(&container).unwrap_or_else(|e| panic!("the agent refuses upstream's defaults: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Default values: deploy/kured.yaml's objects, names, RBAC and agent

#[test]
fn helm_install_kured_with_default_values_renders_deploy_kured_yaml() {
    let chart = Helm::new().template("kured", "kube-system", &[]);
    let manifest = Rendered::manifest("deploy/kured.yaml");
    assert_eq!(
        chart.names(),
        manifest.names(),
        "(kind, namespace, name) of the objects"
    );

    // The same rules, rule for rule; and the same bindings.
    assert_eq!(
        chart.get::<ClusterRole>("ClusterRole").rules,
        manifest.get::<ClusterRole>("ClusterRole").rules
    );
    assert_eq!(
        chart.get::<Role>("Role").rules,
        manifest.get::<Role>("Role").rules
    );
    let binding = |r: &Rendered| {
        let b: ClusterRoleBinding = r.get("ClusterRoleBinding");
        (b.role_ref, b.subjects)
    };
    assert_eq!(binding(&chart), binding(&manifest));
    let binding = |r: &Rendered| {
        let b: RoleBinding = r.get("RoleBinding");
        (b.role_ref, b.subjects)
    };
    assert_eq!(binding(&chart), binding(&manifest));

    // The same agent. The manifest passes its flags in `command`, the chart in `args`, and the
    // chart always passes the lock's location and the metrics port (here the agent's defaults).
    let (pod, want) = (chart.pod(), manifest.pod());
    let (container, want_container) = (chart.container(), manifest.container());
    assert_eq!(container.command, Some(strings(&["/usr/bin/kured"])));
    assert_eq!(
        args(&container),
        strings(&[
            "--ds-name=kured",
            "--ds-namespace=kube-system",
            "--reboot-sentinel=/sentinel/reboot-required",
            "--metrics-port=8080",
        ])
    );
    let mut manifest_flags = want_container.command.clone().unwrap_or_default().split_off(1);
    manifest_flags.extend(strings(&[
        "--ds-name=kured",
        "--ds-namespace=kube-system",
        "--metrics-port=8080",
    ]));
    manifest_flags.sort();
    let mut chart_flags = args(&container);
    chart_flags.sort();
    assert_eq!(chart_flags, manifest_flags, "deploy/kured.yaml's flags");
    assert_eq!(env_json(&container), json!([node_id_env()]));
    assert_eq!(container.env, want_container.env);
    assert_eq!(container.image, want_container.image);
    assert_eq!(container.image_pull_policy, want_container.image_pull_policy);
    assert_eq!(container.security_context, want_container.security_context);
    assert_eq!(container.ports, want_container.ports);
    assert_eq!(container.liveness_probe, want_container.liveness_probe);
    assert_eq!(container.readiness_probe, want_container.readiness_probe);
    assert_eq!(container.resources, want_container.resources);
    assert_eq!(container.volume_mounts, want_container.volume_mounts);
    assert_eq!(
        container.termination_message_path,
        want_container.termination_message_path
    );
    assert_eq!(
        container.termination_message_policy,
        want_container.termination_message_policy
    );
    assert_eq!(pod.service_account_name, want.service_account_name);
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(pod.volumes, want.volumes);
    assert_eq!(pod.tolerations, want.tolerations);
    assert_eq!(pod.node_selector, want.node_selector);
    agent_start(&container).unwrap_or_else(|e| panic!("the agent refuses the default flags: {e}"));

    // No Service or ServiceMonitor unless asked for.
    assert!(!chart.has("Service") && !chart.has("ServiceMonitor"));
}

#[test]
fn another_release_gets_a_lock_and_a_role_of_its_own() {
    let chart = Helm::new().template("nightly", "ops", &[]);
    let names = chart.names();
    let own =
        |kind: &str, namespace: &str| (kind.to_owned(), namespace.to_owned(), "nightly-kured".to_owned());
    let want: BTreeSet<_> = [
        own("ServiceAccount", "ops"),
        own("ClusterRole", ""),
        own("ClusterRoleBinding", ""),
        own("Role", "ops"),
        own("RoleBinding", "ops"),
        own("DaemonSet", "ops"),
    ]
    .into();
    assert_eq!(names, want);
    let role: Role = chart.get("Role");
    let rules = role.rules.expect("the Role's rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resource_names,
        Some(strings(&["nightly-kured"])),
        "the lock's DaemonSet, and no other"
    );
    let container = chart.container();
    let lock: Vec<String> = args(&container)
        .into_iter()
        .filter(|a| a.starts_with("--ds-"))
        .collect();
    assert_eq!(lock, strings(&["--ds-name=nightly-kured", "--ds-namespace=ops"]));
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        assert_eq!(
            chart.raw(kind)["subjects"],
            json!([{ "kind": "ServiceAccount", "name": "nightly-kured", "namespace": "ops" }]),
            "{kind}"
        );
    }
    assert_eq!(chart.pod().service_account_name.as_deref(), Some("nightly-kured"));

    // Without creating RBAC objects or the account, the chart uses the account it is given.
    let bare = Helm::new().template(
        "nightly",
        "ops",
        &[
            "--set",
            "rbac.create=false",
            "--set",
            "serviceAccount.create=false",
            "--set",
            "serviceAccount.name=ops-kured",
        ],
    );
    let kinds: BTreeSet<String> = bare.names().into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(kinds, BTreeSet::from(["DaemonSet".to_owned()]));
    assert_eq!(bare.pod().service_account_name.as_deref(), Some("ops-kured"));
}

/// Upstream's chart names the account's annotations `serviceAccount.extraAnnotations`; an
/// upstream values file keeps them, and this chart's older `serviceAccount.annotations` still works.
#[test]
fn the_service_accounts_annotations_come_from_upstreams_key_and_ours() {
    let annotations = |args: &[&str]| {
        let chart = Helm::new().template("rel", "ops", args);
        chart.raw("ServiceAccount")["metadata"]["annotations"].clone()
    };
    let identity = "iam.gke.io/gcp-service-account";
    assert_eq!(
        annotations(&[
            "--set",
            &format!(
                "serviceAccount.extraAnnotations.{}=kured@p.iam",
                identity.replace('.', "\\.")
            )
        ]),
        json!({ identity: "kured@p.iam" })
    );
    assert_eq!(
        annotations(&["--set", "serviceAccount.annotations.team=ops"]),
        json!({ "team": "ops" })
    );
    assert_eq!(
        annotations(&[
            "--set-json",
            r#"serviceAccount.extraAnnotations={"a":"upstream","b":"2"}"#,
            "--set-json",
            r#"serviceAccount.annotations={"a":"ours","c":"3"}"#,
        ]),
        json!({ "a": "upstream", "b": "2", "c": "3" })
    );
    assert_eq!(annotations(&[]), Value::Null, "none given: no annotations");
}

// ---------------------------------------------------------------------------------------------
// Representative values

#[test]
fn representative_values_render_exactly_the_expected_agent() {
    let helm = Helm::new();
    let chart = helm.template(
        "rel",
        "ops",
        &[
            "-f",
            REPRESENTATIVE,
            "--api-versions",
            "monitoring.coreos.com/v1/ServiceMonitor",
        ],
    );
    let container = chart.container();
    assert_eq!(
        args(&container),
        strings(&[
            "--ds-name=rel-kured",
            "--ds-namespace=ops",
            "--reboot-sentinel-command=sh -c 'test -e /var/run/reboot-required'",
            "--metrics-port=8080",
            "--period=10m",
            "--reboot-method=signal",
            "--reboot-signal=40",
            "--drain-timeout=15m",
            "--drain-grace-period=0",
            "--skip-wait-for-delete-timeout=1000000",
            "--lock-ttl=30m",
            "--lock-release-delay=5m",
            "--concurrency=2",
            "--prometheus-url=http://prometheus.monitoring.svc:9090",
            "--alert-filter-regexp=^(Watchdog|InfoInhibitor)$",
            "--blocking-pod-selector=app=backup",
            "--blocking-pod-selector=tier in (db,cache),!canary",
            "--prefer-no-schedule-taint=kured.dev/rebooting",
            "--annotate-nodes=true",
            "--pre-reboot-node-labels=kured.dev/reboot=pending",
            "--post-reboot-node-labels=kured.dev/reboot=done",
            "--slack-username=rel-bot",
            "--message-template-drain=Draining %s: kernel update",
            "--log-format=json",
            "--drain-delay=30s",
            "--force-reboot",
        ])
    );
    assert_eq!(
        env_json(&container),
        json!([
            node_id_env(),
            { "name": "KURED_REBOOT_DAYS", "value": "mo,tu,we,th,fr" },
            { "name": "KURED_START_TIME", "value": "22:00" },
            { "name": "KURED_END_TIME", "value": "04:00" },
            { "name": "KURED_TIME_ZONE", "value": "Europe/Berlin" },
            { "name": "KURED_NOTIFY_URL", "valueFrom": { "secretKeyRef": { "name": "kured-notify", "key": "slack" } } },
            { "name": "RUST_LOG", "value": "info,kured=debug" },
            { "name": "KURED_SLACK_CHANNEL", "valueFrom": { "configMapKeyRef": { "name": "kured-channels", "key": "ops" } } },
        ])
    );
    agent_start(&container).unwrap_or_else(|e| panic!("the agent refuses {REPRESENTATIVE}'s flags: {e}"));

    // The window reaches `kured schedule` through the environment, as in the pod.
    let out = Command::new(env!("CARGO_BIN_EXE_kured"))
        .args(["schedule", "--at=2026-11-27T10:00:00Z", "--count=1"])
        .env_clear()
        .envs(resolved_env(&container))
        .output()
        .expect("running kured schedule");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("---MonTueWedThuFri--- between 22:00 and 04:00 Europe/Berlin"),
        "{stdout}"
    );

    // A sentinel command: no hostPath, and a privileged container (the command enters the host's
    // mount namespace) although the reboot is a signal.
    let pod = chart.pod();
    assert_eq!(pod.volumes, None);
    assert_eq!(container.volume_mounts, None);
    assert_eq!(container.security_context, Some(privileged()));

    let ds = chart.daemonset();
    assert_eq!(
        ds.metadata
            .annotations
            .unwrap_or_default()
            .get("example.com/owner")
            .map(String::as_str),
        Some("platform")
    );
    let template = ds.spec.template.metadata.unwrap_or_default();
    assert_eq!(
        template
            .annotations
            .unwrap_or_default()
            .get("example.com/team")
            .map(String::as_str),
        Some("platform")
    );
    let labels = template.labels.unwrap_or_default();
    assert_eq!(labels.get("example.com/tier").map(String::as_str), Some("infra"));
    assert_eq!(
        labels.get("app.kubernetes.io/instance").map(String::as_str),
        Some("rel")
    );
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    assert_eq!(
        serde_json::to_value(&pod.tolerations).expect("JSON"),
        json!([{ "operator": "Exists" }]),
        "tolerations replace the default ones"
    );

    // The Service and the ServiceMonitor find the agents' metrics port.
    let service = chart.raw("Service");
    assert_eq!(service["metadata"]["name"], "rel-kured");
    assert_eq!(
        service["metadata"]["annotations"],
        json!({ "prometheus.io/scrape": "true" })
    );
    assert_eq!(
        service["spec"]["selector"],
        json!({ "app.kubernetes.io/name": "kured", "app.kubernetes.io/instance": "rel" })
    );
    assert_eq!(
        service["spec"]["ports"],
        json!([{ "name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP" }])
    );
    let monitor = chart.raw("ServiceMonitor");
    assert_eq!(monitor["metadata"]["namespace"], "ops");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let selected = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    for (key, value) in selected {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "the Service carries {key}"
        );
    }
    assert_eq!(
        monitor["spec"]["namespaceSelector"],
        json!({ "matchNames": ["ops"] })
    );
    assert_eq!(
        monitor["spec"]["endpoints"],
        json!([{ "port": "metrics", "path": "/metrics", "interval": "30s" }])
    );
}

/// The check in [`agent_start`] fails on what the agent refuses: a bad value and an unknown flag.
#[test]
fn the_agents_validation_catches_bad_rendered_flags() {
    let helm = Helm::new();
    let bad_value = helm.template("kured", "kube-system", &["--set", "configuration.period=soon"]);
    let refusal = agent_start(&bad_value.container()).expect_err("--period=soon");
    assert!(
        refusal.contains("exit Some(2)") && refusal.contains("--period"),
        "{refusal}"
    );
    let unknown = helm.template("kured", "kube-system", &["--set", "extraArgs.reboot-sooner=1"]);
    let refusal = agent_start(&unknown.container()).expect_err("--reboot-sooner");
    assert!(
        refusal.contains("exit Some(2)") && refusal.contains("--reboot-sooner"),
        "{refusal}"
    );
}

// ---------------------------------------------------------------------------------------------
// Reboot method, sentinel, notifications, ServiceMonitor

fn privileged() -> SecurityContext {
    serde_json::from_value(json!({ "privileged": true, "runAsUser": 0, "readOnlyRootFilesystem": true }))
        .expect("a security context")
}

#[test]
fn the_reboot_method_and_the_sentinel_choose_the_security_context_and_the_volume() {
    let helm = Helm::new();
    let signal_manifest = Rendered::manifest("deploy/kured-signal.yaml");
    let command_manifest = Rendered::manifest("deploy/kured.yaml");

    // Signal, sentinel file: CAP_KILL alone, exactly as deploy/kured-signal.yaml.
    let signal = helm.template(
        "kured",
        "kube-system",
        &["--set", "configuration.rebootMethod=signal"],
    );
    let container = signal.container();
    assert_eq!(
        container.security_context,
        signal_manifest.container().security_context
    );
    assert!(args(&container).contains(&"--reboot-method=signal".to_owned()));
    assert_eq!(signal.pod().volumes, signal_manifest.pod().volumes);
    assert_eq!(container.volume_mounts, signal_manifest.container().volume_mounts);

    // Command: privileged, as deploy/kured.yaml.
    let command = helm.template(
        "kured",
        "kube-system",
        &["--set", "configuration.rebootMethod=command"],
    );
    assert_eq!(
        command.container().security_context,
        command_manifest.container().security_context
    );
    assert_eq!(command.container().security_context, Some(privileged()));

    // A context of one's own replaces the choice as a whole.
    let own = helm.template(
        "kured",
        "kube-system",
        &[
            "--set",
            "configuration.rebootMethod=signal",
            "--set-json",
            r#"containerSecurityContext={"privileged":true}"#,
        ],
    );
    assert_eq!(
        serde_json::to_value(own.container().security_context).expect("JSON"),
        json!({ "privileged": true })
    );

    // Another sentinel file: its directory from the host, the file under /sentinel.
    let elsewhere = helm.template(
        "kured",
        "kube-system",
        &["--set", "configuration.rebootSentinel=/run/kured/reboot-needed"],
    );
    assert!(args(&elsewhere.container()).contains(&"--reboot-sentinel=/sentinel/reboot-needed".to_owned()));
    assert_eq!(
        serde_json::to_value(elsewhere.pod().volumes).expect("JSON"),
        json!([{ "name": "sentinel", "hostPath": { "path": "/run/kured", "type": "Directory" } }])
    );

    // Without the hostPath, the path is the container's own, and the volume is the user's.
    let own_volume = helm.template(
        "kured",
        "kube-system",
        &[
            "--set",
            "configuration.useRebootSentinelHostPath=false",
            "--set",
            "configuration.rebootSentinel=/host/reboot-required",
            "--set-json",
            r#"volumes=[{"name":"host","hostPath":{"path":"/var/run"}}]"#,
            "--set-json",
            r#"volumeMounts=[{"name":"host","mountPath":"/host"}]"#,
        ],
    );
    let container = own_volume.container();
    assert!(args(&container).contains(&"--reboot-sentinel=/host/reboot-required".to_owned()));
    assert_eq!(
        serde_json::to_value(own_volume.pod().volumes).expect("JSON"),
        json!([{ "name": "host", "hostPath": { "path": "/var/run" } }])
    );
    assert_eq!(
        serde_json::to_value(container.volume_mounts).expect("JSON"),
        json!([{ "name": "host", "mountPath": "/host" }])
    );

    helm.assert_refuses(
        &["--set", "configuration.rebootSentinel=reboot-required"],
        "configuration.rebootSentinel must be an absolute path",
    );
}

#[test]
fn notification_urls_come_from_values_or_from_a_secret_never_both() {
    let helm = Helm::new();
    let two = helm.template(
        "kured",
        "kube-system",
        &["--set", "configuration.notifyUrl={smtp://mail.example.com:25/?from=a@example.com&to=b@example.com,generic+https://hooks.example.com/x}"],
    );
    let notify: Vec<String> = args(&two.container())
        .into_iter()
        .filter(|a| a.starts_with("--notify-url="))
        .collect();
    assert_eq!(
        notify,
        strings(&[
            "--notify-url=smtp://mail.example.com:25/?from=a@example.com&to=b@example.com",
            "--notify-url=generic+https://hooks.example.com/x",
        ])
    );
    agent_start(&two.container()).unwrap_or_else(|e| panic!("the agent refuses two URLs: {e}"));

    let secret = helm.template(
        "kured",
        "kube-system",
        &["--set", "configuration.notifyUrlSecret.name=kured-notify"],
    );
    let container = secret.container();
    assert!(!args(&container).iter().any(|a| a.starts_with("--notify-url")));
    assert_eq!(
        env_json(&container)[1],
        json!({ "name": "KURED_NOTIFY_URL", "valueFrom": { "secretKeyRef": { "name": "kured-notify", "key": "url" } } })
    );

    helm.assert_refuses(
        &[
            "--set",
            "configuration.notifyUrlSecret.name=kured-notify",
            "--set",
            "configuration.notifyUrl=generic+https://hooks.example.com/x",
        ],
        "set configuration.notifyUrl or configuration.notifyUrlSecret, not both",
    );
}

#[test]
fn a_servicemonitor_without_the_prometheus_operators_api_stops_rendering() {
    let helm = Helm::new();
    helm.assert_refuses(
        &["--set", "metrics.create=true"],
        "metrics.create needs the Prometheus Operator's ServiceMonitor API (monitoring.coreos.com/v1)",
    );
    let served = helm.template(
        "kured",
        "kube-system",
        &[
            "--set",
            "metrics.create=true",
            "--set",
            "metrics.namespace=monitoring",
            "--set",
            "metrics.scrapeTimeout=10s",
            "--api-versions",
            "monitoring.coreos.com/v1/ServiceMonitor",
        ],
    );
    // metrics.create brings the Service the ServiceMonitor selects.
    assert_eq!(served.raw("Service")["metadata"]["name"], "kured");
    let monitor = served.raw("ServiceMonitor");
    assert_eq!(monitor["metadata"]["namespace"], "monitoring");
    assert_eq!(
        monitor["spec"]["namespaceSelector"],
        json!({ "matchNames": ["kube-system"] })
    );
    assert_eq!(
        monitor["spec"]["endpoints"],
        json!([{ "port": "metrics", "path": "/metrics", "interval": "60s", "scrapeTimeout": "10s" }])
    );
}

// ---------------------------------------------------------------------------------------------
// On the test cluster

/// The cluster-wide objects of the releases a test applies, the ClusterRole and ClusterRoleBinding
/// named after each release's full name, deleted on drop; the rest goes with the scope's namespace.
struct ClusterWide(Vec<String>);

impl Drop for ClusterWide {
    fn drop(&mut self) {
        let kubeconfig = format!("--kubeconfig={}", kubeconfig_path().display());
        for name in &self.0 {
            for kind in ["clusterrolebinding", "clusterrole"] {
                let result = Command::new("kubectl")
                    .args([
                        &kubeconfig,
                        "delete",
                        kind,
                        name,
                        "--ignore-not-found",
                        "--wait=false",
                    ])
                    .stdout(std::process::Stdio::null())
                    .status();
                if !result.is_ok_and(|s| s.success()) {
                    eprintln!("cleanup: deleting {kind} {name} failed");
                }
            }
        }
    }
}

#[tokio::test]
async fn applied_to_the_test_cluster_the_agents_run_on_the_scopes_nodes_with_the_access_they_need() {
    let helm = Helm::new();
    let scope = Scope::new("helm").await;
    let nodes = scope.create_nodes(2).await;
    let on_nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let namespace = scope.namespace.clone();

    // Two releases side by side in the scope's namespace: default values (full name = release
    // name, as with `helm install kured`), and the representative ones. Both only on this scope's
    // nodes; their cluster-wide objects carry the scope's id in their names.
    let plain = format!("kured-{}", scope.id);
    let signal_release = format!("sig-{}", scope.id);
    let signal = format!("{signal_release}-kured");
    let _cluster_wide = ClusterWide(vec![plain.clone(), signal.clone()]);
    let on_scope_nodes = format!("nodeSelector.kured\\.test/scope={}", scope.id);
    let plain_yaml = helm
        .template_yaml(&plain, &namespace, &["--set-string", &on_scope_nodes])
        .unwrap_or_else(|e| panic!("helm template {plain}: {e}"));
    // The test cluster serves no ServiceMonitor API, so the representative values go without one.
    let signal_yaml = helm
        .template_yaml(
            &signal_release,
            &namespace,
            &[
                "-f",
                REPRESENTATIVE,
                "--set",
                "metrics.create=false",
                "--set-string",
                &on_scope_nodes,
            ],
        )
        .unwrap_or_else(|e| panic!("helm template {signal_release}: {e}"));
    // What the representative values refer to.
    kubectl(
        &[
            "--namespace",
            &namespace,
            "create",
            "secret",
            "generic",
            "kured-notify",
            &format!("--from-literal=slack={SECRET_NOTIFY_URL}"),
        ],
        "",
    )
    .await;
    kubectl(
        &[
            "--namespace",
            &namespace,
            "create",
            "configmap",
            "kured-channels",
            "--from-literal=ops=ops",
        ],
        "",
    )
    .await;
    for yaml in [&plain_yaml, &signal_yaml] {
        kubectl(
            &[
                "apply",
                "--server-side",
                "--field-manager=kured-helm-test",
                "-f",
                "-",
            ],
            yaml,
        )
        .await;
    }
    running_on(&scope, &format!("app.kubernetes.io/instance={plain}"), &on_nodes).await;
    let pods = running_on(
        &scope,
        &format!("app.kubernetes.io/instance={signal_release}"),
        &on_nodes,
    )
    .await;
    let pod = pods[0].spec.as_ref().expect("a pod spec");
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    assert_eq!(
        pod.containers[0].args,
        Rendered::parse(&signal_yaml).container().args,
        "the pods run the rendered arguments"
    );

    // Each agent's account may do what the agent does, on its own lock only.
    let dir = tempfile::tempdir().expect("a temp dir");
    let plain_agent = service_account_client(&scope, &plain, &plain, dir.path())
        .await
        .1;
    let signal_agent = service_account_client(&scope, &signal, &signal, dir.path())
        .await
        .1;
    let node = nodes[0].as_str();
    let ns = namespace.as_str();
    let allowed = [
        request("get", "/nodes", "", node),
        request("patch", "/nodes", "", node),
        request("list", "/pods", "", ""),
        request("watch", "/pods", "", ""),
        request("get", "/pods", "kube-system", "any"),
        request("create", "/pods/eviction", ns, "any"),
        request("get", "apps/daemonsets", "kube-system", "any"),
        request("get", "apps/daemonsets", ns, &plain),
        request("update", "apps/daemonsets", ns, &plain),
        request("list", "apps/daemonsets", ns, &plain),
        request("watch", "apps/daemonsets", ns, &plain),
    ];
    let refused = [
        request("update", "/nodes", "", node),
        request("delete", "/nodes", "", node),
        request("patch", "/nodes/status", "", node),
        request("delete", "/pods", ns, "any"),
        request("create", "/pods", ns, ""),
        request("get", "/secrets", ns, "kured-notify"),
        request("update", "apps/daemonsets", ns, &signal),
        request("update", "apps/daemonsets", "default", &plain),
        request("patch", "apps/daemonsets", ns, &plain),
        request("delete", "apps/daemonsets", ns, &plain),
        request("list", "apps/daemonsets", ns, ""),
    ];
    for request in &allowed {
        assert!(may(&plain_agent, request).await, "{plain}'s agent may {request}");
    }
    for request in &refused {
        assert!(
            !may(&plain_agent, request).await,
            "{plain}'s agent may not {request}"
        );
    }
    let other_lock = request("update", "apps/daemonsets", ns, &plain);
    assert!(
        !may(&signal_agent, &other_lock).await,
        "{signal}'s agent may not {other_lock}"
    );

    // And for real: the agent writes its own lock, and is refused another release's.
    let as_agent: Api<DaemonSet> = Api::namespaced(plain_agent, ns);
    for (name, may_write) in [(&plain, true), (&signal, false)] {
        let mut ds = scope
            .api::<DaemonSet>()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading DaemonSet {name}: {e}"));
        ds.metadata
            .annotations
            .get_or_insert_default()
            .insert(LOCK_ANNOTATION.to_owned(), held_by(node));
        let written = as_agent.replace(name, &PostParams::default(), &ds).await;
        match (may_write, written) {
            (true, Ok(_)) => {}
            (false, Err(kube::Error::Api(e))) if e.code == 403 => {}
            (_, other) => panic!("{plain}'s agent writing the lock on {name}: {other:?}"),
        }
    }

    // metrics.create against the real cluster, which serves no ServiceMonitor API: helm stops.
    let groups = scope.client.list_api_groups().await.expect("listing API groups");
    assert!(
        !groups.groups.iter().any(|g| g.name == "monitoring.coreos.com"),
        "the test cluster is expected to serve no monitoring.coreos.com API"
    );
    let kubeconfig = format!("--kubeconfig={}", kubeconfig_path().display());
    let refusal = helm
        .template_yaml(
            &format!("mon-{}", scope.id),
            &namespace,
            &["--validate", &kubeconfig, "--set", "metrics.create=true"],
        )
        .expect_err("helm template --validate with metrics.create and no ServiceMonitor API");
    assert!(
        refusal.contains("metrics.create needs the Prometheus Operator's ServiceMonitor API"),
        "{refusal}"
    );
}
