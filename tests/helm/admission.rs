//! The admission policies (`admissionPolicy.*`): rendered only where the cluster serves
//! ValidatingAdmissionPolicy, exactly deploy/kured-admission-policy.yaml with default values,
//! and with another release's names, account and agent settings otherwise; the API server accepts
//! what they render.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::render::{Helm, Rendered};
use crate::support::cluster::kubectl;

/// What `helm template` must be told the cluster serves for the policies to render (`helm
/// install` asks the cluster).
const API: [&str; 2] = [
    "--api-versions",
    "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
];
const POLICY: &str = "ValidatingAdmissionPolicy";
const BINDING: &str = "ValidatingAdmissionPolicyBinding";
const MANIFEST: &str = "deploy/kured-admission-policy.yaml";

/// The policies and bindings, by (kind, name).
fn policies(rendered: &Rendered) -> Vec<(String, String, Value)> {
    let mut found: Vec<(String, String, Value)> = [POLICY, BINDING]
        .iter()
        .flat_map(|kind| rendered.all(kind))
        .map(|o| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (text(&o["kind"]), text(&o["metadata"]["name"]), o.clone())
        })
        .collect();
    found.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    found
}

/// The expression of `policy`'s variable `name`.
fn variable<'a>(policy: &'a Value, name: &str) -> &'a str {
    policy["spec"]["variables"]
        .as_array()
        .expect("variables")
        .iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["expression"].as_str())
        .unwrap_or_else(|| panic!("no variable {name} in {policy}"))
}

/// The policy's spec without what a release's settings change: its matchConditions and the
/// variables that stand for settings.
fn fixed_part(policy: &Value) -> Value {
    let mut spec = policy["spec"].clone();
    spec["matchConditions"] = Value::Null;
    if let Some(variables) = spec["variables"].as_array_mut() {
        variables.retain(|v| {
            ![
                "dsNamespace",
                "dsName",
                "lockAnnotation",
                "taint",
                "labels",
                "leaseNamespace",
                "leaseName",
            ]
            .contains(&v["name"].as_str().unwrap_or_default())
        });
    }
    spec
}

#[test]
fn with_default_values_the_chart_renders_deploy_kured_admission_policy_yaml() {
    let helm = Helm::new();
    let chart = policies(&helm.template("kured", "kube-system", &API));
    let manifest = policies(&Rendered::manifest(MANIFEST));
    assert_eq!(manifest.len(), 6, "{MANIFEST}: three policies, three bindings");
    let names = |p: &[(String, String, Value)]| -> Vec<(String, String)> {
        p.iter().map(|(k, n, _)| (k.clone(), n.clone())).collect()
    };
    assert_eq!(names(&chart), names(&manifest));
    for ((kind, name, rendered), (_, _, shipped)) in chart.iter().zip(&manifest) {
        assert_eq!(rendered["spec"], shipped["spec"], "{kind} {name}");
    }

    // Without the API (helm template's default, a cluster before 1.30) or when disabled: none.
    for args in [
        &[][..],
        &[API[0], API[1], "--set", "admissionPolicy.enabled=false"][..],
    ] {
        let rendered = helm.template("kured", "kube-system", args);
        assert!(!rendered.has(POLICY) && !rendered.has(BINDING), "{args:?}");
    }
}

/// Another release's names, account and settings, given the ways the values give them.
const NIGHTLY: [&str; 16] = [
    "--set",
    "serviceAccount.name=ops-kured",
    "--set",
    "configuration.preferNoScheduleTaint=example.com/waiting",
    "--set-json",
    r#"configuration.preRebootNodeLabels=["example.com/reboot=pending","example.com/drained=yes"]"#,
    "--set-string",
    r"configuration.postRebootNodeLabels=example.com/reboot=done\,example.com/rebooted=yes",
    "--set-json",
    r#"extraArgs={"lock-annotation":"example.com/lock"}"#,
    "--set",
    "admissionPolicy.validationActions={Warn,Audit}",
    API[0],
    API[1],
    "--set",
    "nodeSelector.example\\.com/pool=nightly",
];

#[test]
fn the_policies_follow_the_release_its_account_and_the_agents_settings() {
    let helm = Helm::new();
    let rendered = helm.template("nightly", "ops", &NIGHTLY);
    let found = policies(&rendered);
    let names: BTreeSet<(String, String)> = found.iter().map(|(k, n, _)| (k.clone(), n.clone())).collect();
    let want: BTreeSet<(String, String)> = [POLICY, BINDING]
        .iter()
        .flat_map(|k| {
            [
                "nightly-kured-daemonset",
                "nightly-kured-node",
                "nightly-kured-lease",
            ]
            .map(|n| ((*k).to_owned(), n.to_owned()))
        })
        .collect();
    assert_eq!(names, want);
    let find = |kind: &str, name: &str| -> &Value {
        &found
            .iter()
            .find(|(k, n, _)| k == kind && n == name)
            .expect("rendered")
            .2
    };
    let shipped = Rendered::manifest(MANIFEST);
    let shipped = policies(&shipped);
    let shipped = |name: &str| -> &Value {
        &shipped
            .iter()
            .find(|(k, n, _)| k == POLICY && n == name)
            .expect("shipped")
            .2
    };
    for (policy, shipped_name) in [
        ("nightly-kured-daemonset", "kured-daemonset"),
        ("nightly-kured-node", "kured-node"),
        ("nightly-kured-lease", "kured-lease"),
    ] {
        let object = find(POLICY, policy);
        assert_eq!(
            object["spec"]["matchConditions"],
            json!([{
                "name": "kured-service-account",
                "expression": "request.userInfo.username == 'system:serviceaccount:ops:ops-kured'",
            }]),
            "{policy}: the release's account, and no one else"
        );
        assert_eq!(
            fixed_part(object),
            fixed_part(shipped(shipped_name)),
            "{policy}: the rest as shipped"
        );
        let binding = find(BINDING, policy);
        assert_eq!(binding["spec"]["policyName"], json!(policy));
        assert_eq!(binding["spec"]["validationActions"], json!(["Warn", "Audit"]));
    }
    let lock = find(POLICY, "nightly-kured-daemonset");
    assert_eq!(variable(lock, "dsNamespace"), "'ops'");
    assert_eq!(variable(lock, "dsName"), "'nightly-kured'");
    assert_eq!(
        variable(lock, "lockAnnotation"),
        "'example.com/lock'",
        "from extraArgs"
    );
    let lease = find(POLICY, "nightly-kured-lease");
    assert_eq!(variable(lease, "leaseNamespace"), "'ops'");
    assert_eq!(variable(lease, "leaseName"), "'nightly-kured'");
    assert_eq!(variable(lease, "lockAnnotation"), "'example.com/lock'");
    let node = find(POLICY, "nightly-kured-node");
    assert_eq!(variable(node, "taint"), "'example.com/waiting'");
    assert_eq!(
        variable(node, "labels"),
        "['example.com/reboot', 'example.com/drained', 'example.com/rebooted']",
        "the keys of both lists, each once"
    );

    // configuration's key, when set, is the flag the agents get.
    let configured = helm.template(
        "kured",
        "kube-system",
        &[
            API[0],
            API[1],
            "--set",
            "configuration.lockAnnotation=example.com/other",
        ],
    );
    let configured = policies(&configured);
    for name in ["kured-daemonset", "kured-lease"] {
        let lock = &configured
            .iter()
            .find(|(k, n, _)| k == POLICY && n == name)
            .expect("rendered")
            .2;
        assert_eq!(variable(lock, "lockAnnotation"), "'example.com/other'", "{name}");
    }
}

#[test]
fn a_setting_the_policies_cannot_name_or_an_unknown_action_is_refused() {
    let helm = Helm::new();
    helm.assert_refuses(
        &[
            API[0],
            API[1],
            "--set",
            "configuration.preferNoScheduleTaint=it's",
        ],
        "\"it's\" is not a Kubernetes key or name",
    );
    helm.assert_refuses(
        &["--set", "admissionPolicy.validationActions={Block}"],
        "/admissionPolicy/validationActions/0",
    );
    helm.assert_refuses(&["--set", "admissionPolicy.enable=true"], "enable");
}

/// The API server compiles a policy's expressions when it is created: a server-side dry run
/// refuses one that does not compile, and checks the objects' fields.
#[tokio::test]
async fn the_api_server_accepts_the_rendered_policies() {
    let helm = Helm::new();
    for (release, namespace, args) in [
        ("kured", "kube-system", &API[..]),
        ("nightly", "ops", &NIGHTLY[..]),
    ] {
        let rendered = helm.template(release, namespace, args);
        let items: Vec<Value> = policies(&rendered).into_iter().map(|(_, _, o)| o).collect();
        let list = json!({ "apiVersion": "v1", "kind": "List", "items": items });
        let out = kubectl(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=kured-helm-test",
                "-f",
                "-",
            ],
            &list.to_string(),
        )
        .await;
        assert_eq!(out.lines().count(), 6, "{release}: {out}");
    }
}
