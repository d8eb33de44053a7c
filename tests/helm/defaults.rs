//! Default values: deploy/kured.yaml's objects, names, RBAC and agent; another release's objects
//! of its own.

use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::{Value, json};

use crate::render::{DEFAULT_ARGS, Helm, Rendered, agent_start, args, env_json, node_id_env, strings};

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
    assert_eq!(args(&container), strings(&DEFAULT_ARGS));
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

/// The rules of the chart's Role: (resources, resource names, verbs) each.
fn role_rules(chart: &Rendered) -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
    let role: Role = chart.get("Role");
    role.rules
        .expect("the Role's rules")
        .into_iter()
        .map(|r| {
            (
                r.resources.unwrap_or_default(),
                r.resource_names.unwrap_or_default(),
                r.verbs,
            )
        })
        .collect()
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
    let named = role_rules(&chart);
    assert_eq!(
        named,
        [
            (
                strings(&["daemonsets"]),
                strings(&["nightly-kured"]),
                strings(&["get", "update", "list", "watch"])
            ),
            (
                strings(&["leases"]),
                strings(&["nightly-kured"]),
                strings(&["get"])
            ),
        ],
        "the lock's DaemonSet, and no other; the other backend's Lease, read only"
    );
    // The Lease backend: the Lease of the release's name, created by the agents; no write on
    // any DaemonSet.
    let lease = Helm::new().template("nightly", "ops", &["--set", "configuration.lockBackend=lease"]);
    let named = role_rules(&lease);
    assert_eq!(
        named,
        [
            (
                strings(&["leases"]),
                strings(&["nightly-kured"]),
                strings(&["get", "update", "list", "watch"])
            ),
            (strings(&["leases"]), vec![], strings(&["create"])),
        ],
        "with the Lease backend, the Lease alone"
    );
    assert!(args(&lease.container()).contains(&"--lock-backend=lease".to_owned()));
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
