//! helm as `testenv/build` builds it, what it renders from `charts/kured`, and the real agent
//! binary given the rendered container's command line and environment.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, SecurityContext};
use serde_json::{Value, json};

use crate::support::cli::agent_accepts;
use crate::support::cluster::repo;

pub const CHART: &str = "charts/kured";
pub const REPRESENTATIVE: &str = "tests/helm/values-signal.yaml";
/// The agent's arguments with default values, release `kured` in `kube-system`: the lock's
/// location, the sentinel and the metrics port (the agent's defaults).
pub const DEFAULT_ARGS: [&str; 4] = [
    "--ds-name=kured",
    "--ds-namespace=kube-system",
    "--reboot-sentinel=/sentinel/reboot-required",
    "--metrics-port=8080",
];
pub const EVERY_FLAG: &str = "tests/helm/values-every-flag.yaml";

/// helm as `testenv/build` builds it, with a home of its own (cache, configuration, data), and no
/// cluster unless a command names one.
pub struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    pub fn new() -> Helm {
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
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
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
    pub fn template_yaml(&self, release: &str, namespace: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["template", release, CHART, "--namespace", namespace];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// The rendered objects; panics with helm's message if it refuses.
    pub fn template(&self, release: &str, namespace: &str, args: &[&str]) -> Rendered {
        let yaml = self
            .template_yaml(release, namespace, args)
            .unwrap_or_else(|e| panic!("helm template {release} {args:?}: {e}"));
        Rendered::parse(&yaml)
    }

    /// Asserts that helm refuses to render with `args`, saying `expected`.
    pub fn assert_refuses(&self, args: &[&str], expected: &str) {
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
pub struct Rendered {
    objects: Vec<Value>,
}

impl Rendered {
    pub fn parse(yaml: &str) -> Rendered {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("reading YAML: {e}\n{yaml}"));
        Rendered {
            objects: docs.into_iter().filter(|d| !d.is_null()).collect(),
        }
    }

    pub fn manifest(path: &str) -> Rendered {
        let text =
            std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        Rendered::parse(&text)
    }

    /// (kind, namespace, name) of every object.
    pub fn names(&self) -> BTreeSet<(String, String, String)> {
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

    /// Every object of `kind`, in order.
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    pub fn has(&self, kind: &str) -> bool {
        self.objects.iter().any(|o| o["kind"] == kind)
    }

    pub fn raw(&self, kind: &str) -> &Value {
        let mut found = self.objects.iter().filter(|o| o["kind"] == kind);
        let object = found
            .next()
            .unwrap_or_else(|| panic!("no {kind} among {:?}", self.names()));
        assert!(found.next().is_none(), "more than one {kind}: {:?}", self.names());
        object
    }

    pub fn get<K: serde::de::DeserializeOwned>(&self, kind: &str) -> K {
        serde_json::from_value(self.raw(kind).clone()).unwrap_or_else(|e| panic!("reading the {kind}: {e}"))
    }

    pub fn daemonset(&self) -> DaemonSet {
        self.get("DaemonSet")
    }

    pub fn pod(&self) -> PodSpec {
        self.daemonset().spec.template.spec.expect("a pod template")
    }

    pub fn container(&self) -> Container {
        let pod = self.pod();
        assert_eq!(pod.containers.len(), 1, "one container");
        pod.containers[0].clone()
    }
}

pub fn args(container: &Container) -> Vec<String> {
    container.args.clone().unwrap_or_default()
}

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The container's environment as JSON, in order.
pub fn env_json(container: &Container) -> Value {
    serde_json::to_value(container.env.clone().unwrap_or_default()).expect("env as JSON")
}

pub fn node_id_env() -> Value {
    json!({ "name": "KURED_NODE_ID", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } })
}

/// A YAML file of the repository as JSON.
pub fn yaml_file(path: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

pub fn keys(map: &Value) -> BTreeSet<String> {
    map.as_object().expect("a mapping").keys().cloned().collect()
}

pub fn kebab(camel: &str) -> String {
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

pub fn camel(kebab: &str) -> String {
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
pub fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The real agent binary, given what the chart renders

/// A notification URL that stands in for the Secret's in the binary's checks.
pub const SECRET_NOTIFY_URL: &str = "slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook";

/// The container's environment as the kubelet would give it, with stand-ins for what comes from
/// the cluster: the node's name, the Secret's URL, a ConfigMap's value.
pub fn resolved_env(container: &Container) -> Vec<(String, String)> {
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
pub fn agent_start(container: &Container) -> Result<(), String> {
    assert_eq!(
        container.command.as_deref(),
        Some(&strings(&["/usr/bin/kured"])[..]),
        "the image's binary"
    );
    agent_accepts(args(container), resolved_env(container))
}

pub fn privileged() -> SecurityContext {
    serde_json::from_value(json!({ "privileged": true, "runAsUser": 0, "readOnlyRootFilesystem": true }))
        .expect("a security context")
}
