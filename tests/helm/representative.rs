//! Representative values (tests/helm/values-signal.yaml): exactly the expected agent, which the
//! real binary accepts; and the check of that catching what the agent refuses.

use serde_json::json;

use crate::render::{
    Helm, REPRESENTATIVE, agent_start, args, env_json, node_id_env, privileged, resolved_env, strings,
};
use std::process::Command;

use crate::support::cli::run;

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
    let out = run(Command::new(env!("CARGO_BIN_EXE_kured"))
        .args(["schedule", "--at=2026-11-27T10:00:00Z", "--count=1"])
        .env_clear()
        .envs(resolved_env(&container)));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout
            .contains("---MonTueWedThuFri--- between 22:00 and 04:00 Europe/Berlin"),
        "{out}"
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
