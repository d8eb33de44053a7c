//! What single values choose: the reboot method and the sentinel (the security context and the
//! hostPath volume), notification URLs from a value or a Secret, a ServiceMonitor.

use serde_json::json;

use crate::render::{Helm, Rendered, agent_start, args, env_json, privileged, strings};

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
