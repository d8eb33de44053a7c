//! The Grafana dashboard and the PrometheusRule: the chart renders the files of `deploy/` (its
//! copies in `files/` are equal to them), the dashboard as a ConfigMap with the sidecar's label,
//! the rules with the thresholds and the job of the values.

use serde_json::{Value, json};

use crate::render::{CHART, Helm, yaml_file};
use crate::support::cluster::repo;

const DASHBOARD: &str = "deploy/grafana-dashboard.json";
const RULES: &str = "deploy/prometheus-rules.yaml";
const RULE_API: &str = "monitoring.coreos.com/v1/PrometheusRule";

#[test]
fn the_charts_copies_are_the_shipped_files() {
    for shipped in [DASHBOARD, RULES] {
        let name = shipped.trim_start_matches("deploy/");
        let copy = format!("{CHART}/files/{name}");
        let read = |path: &str| {
            std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
        };
        assert!(
            read(&copy) == read(shipped),
            "{copy} differs from {shipped}: copy {shipped} over it (cp {shipped} {copy})"
        );
    }
}

#[test]
fn neither_is_rendered_unless_enabled() {
    let chart = Helm::new().template("kured", "kube-system", &["--api-versions", RULE_API]);
    assert!(!chart.has("PrometheusRule"), "{:?}", chart.names());
    assert!(!chart.has("ConfigMap"), "{:?}", chart.names());
}

#[test]
fn the_dashboard_is_a_configmap_with_the_sidecars_label() {
    let helm = Helm::new();
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join(DASHBOARD)).expect("reading the dashboard"),
    )
    .expect("the dashboard is JSON");

    let chart = helm.template(
        "kured",
        "kube-system",
        &["--set", "metrics.grafanaDashboard.enabled=true"],
    );
    let map = chart.raw("ConfigMap");
    assert_eq!(map["metadata"]["name"], "kured-dashboard");
    assert_eq!(map["metadata"]["namespace"], "kube-system");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let text = map["data"]["kured.json"].as_str().expect("data kured.json");
    let rendered: Value = serde_json::from_str(text).expect("kured.json is JSON");
    assert_eq!(rendered, shipped, "the ConfigMap holds {DASHBOARD}");

    // The sidecar's label and namespace of one's own, and a folder annotation.
    let own = helm.template(
        "kured",
        "kube-system",
        &[
            "--set",
            "metrics.grafanaDashboard.enabled=true",
            "--set",
            "metrics.grafanaDashboard.namespace=monitoring",
            "--set",
            "metrics.grafanaDashboard.label=dashboards",
            "--set",
            "metrics.grafanaDashboard.labelValue=kured",
            "--set",
            "metrics.grafanaDashboard.annotations.grafana_folder=Platform",
        ],
    );
    let map = own.raw("ConfigMap");
    assert_eq!(map["metadata"]["namespace"], "monitoring");
    assert_eq!(map["metadata"]["labels"]["dashboards"], "kured");
    assert!(map["metadata"]["labels"].get("grafana_dashboard").is_none());
    assert_eq!(
        map["metadata"]["annotations"],
        json!({ "grafana_folder": "Platform" })
    );
}

/// Every rule of `spec`'s groups.
fn rules(spec: &Value) -> Vec<&Value> {
    spec["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect()
}

/// The rule of alert `alert` in `spec`.
fn rule<'a>(spec: &'a Value, alert: &str) -> &'a Value {
    rules(spec)
        .into_iter()
        .find(|r| r["alert"] == alert)
        .unwrap_or_else(|| panic!("no alert {alert} in {spec}"))
}

fn exprs(spec: &Value) -> Vec<String> {
    rules(spec)
        .iter()
        .map(|r| r["expr"].as_str().expect("an expr").to_owned())
        .collect()
}

/// The PrometheusRule of release `release` with the rules enabled and `sets` (`key=value`).
fn rule_object(helm: &Helm, release: &str, namespace: &str, sets: &[&str]) -> Value {
    let mut args = vec![
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--api-versions",
        RULE_API,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    helm.template(release, namespace, &args)
        .raw("PrometheusRule")
        .clone()
}

#[test]
fn the_prometheusrule_has_the_shipped_rules_with_the_values_thresholds_and_job() {
    let helm = Helm::new();
    helm.assert_refuses(
        &["--set", "metrics.prometheusRule.enabled=true"],
        "metrics.prometheusRule.enabled needs the Prometheus Operator's PrometheusRule API",
    );
    helm.assert_refuses(
        &[
            "--set",
            "metrics.prometheusRule.lockHeldHour=2",
            "--api-versions",
            RULE_API,
        ],
        "lockHeldHour",
    );
    let shipped = yaml_file(RULES);

    // Default values, release kured: the shipped rules exactly.
    let object = rule_object(&helm, "kured", "kube-system", &[]);
    assert_eq!(object["metadata"]["name"], "kured");
    assert_eq!(object["metadata"]["namespace"], "kube-system");
    assert_eq!(object["spec"], shipped["spec"], "the rules of {RULES}");

    // Thresholds, job, namespace and labels of one's own.
    let object = rule_object(
        &helm,
        "fleet",
        "ops",
        &[
            "metrics.prometheusRule.rebootRequiredDays=3",
            "metrics.prometheusRule.lockHeldHours=2",
            "metrics.prometheusRule.namespace=monitoring",
            "metrics.prometheusRule.labels.release=prometheus",
        ],
    );
    assert_eq!(object["metadata"]["name"], "fleet-kured");
    assert_eq!(object["metadata"]["namespace"], "monitoring");
    assert_eq!(object["metadata"]["labels"]["release"], "prometheus");
    let spec = &object["spec"];
    let required = rule(spec, "KuredRebootRequiredTooLong");
    assert_eq!(required["for"], "3d");
    assert_eq!(
        required["annotations"]["summary"],
        "Node {{ $labels.node }} has needed a reboot for more than 3 days"
    );
    let lock = rule(spec, "KuredLockHeldTooLong");
    assert_eq!(
        lock["expr"],
        r#"max(kured_lock_age_seconds{job="fleet-kured"}) > 2 * 3600"#
    );
    assert_eq!(
        lock["annotations"]["summary"],
        "The kured reboot lock has been held for more than 2 hours"
    );
    // The job is the metrics Service's name, which a ServiceMonitor gives its targets.
    for expr in exprs(spec) {
        assert!(expr.contains(r#"job="fleet-kured""#), "{expr}");
        assert!(!expr.contains(r#"job="kured""#), "{expr}");
    }
    // Everything else as shipped.
    let mut halted = rule(&shipped["spec"], "KuredRolloutHalted").clone();
    halted["expr"] = json!(r#"max by (node) (kured_post_reboot_halted{job="fleet-kured"}) == 1"#);
    assert_eq!(rule(spec, "KuredRolloutHalted"), &halted);

    // The Service's own name, or a job given outright.
    for (set, job) in [
        ("service.name=kured-metrics", "kured-metrics"),
        ("metrics.prometheusRule.job=node-agents", "node-agents"),
    ] {
        let object = rule_object(&helm, "kured", "kube-system", &[set]);
        for expr in exprs(&object["spec"]) {
            assert!(expr.contains(&format!("job=\"{job}\"")), "{set}: {expr}");
        }
    }
}
