//! The Grafana dashboard (`deploy/grafana-dashboard.json`) and the alert rules
//! (`deploy/prometheus-rules.yaml`) against a real Prometheus that scrapes the `/metrics` of three
//! simulated agents through a rolling reboot, one node of which is held back by a blocking pod for
//! a while. No Grafana runs here: the test does what Grafana would, evaluating every query of every
//! panel over the rollout (Grafana's variables given the values of "all nodes"), and every rule's
//! expression, through Prometheus's HTTP API. Each must parse and return its series with values;
//! Prometheus must load the rules and evaluate them without error.
//! Needs `scripts/testcluster up`, root (for `unshare`) and `/usr/bin/prometheus`.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::agents::Fleet;
use support::cluster::repo;
use support::objects::{create_pod, delete_pod};
use support::observer::Observer;
use support::prometheus::Prometheus;
use support::simulated::NodeOptions;

const JOB: &str = "kured";

/// What Grafana puts for the dashboard's variables with every node selected: the job, every node,
/// and a rate interval of a few scrapes (Grafana's is four scrape intervals at least).
const VARIABLES: [(&str, &str); 3] = [("$__rate_interval", "10s"), ("$job", JOB), ("$node", ".*")];

/// One query of the dashboard or the rules, and where it comes from.
struct Query {
    source: String,
    expr: String,
}

/// Every target of every panel (rows' nested panels included), variables replaced.
fn dashboard_queries() -> Vec<Query> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana-dashboard.json"))
        .expect("reading deploy/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().expect("panels").iter().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut expr = target["expr"].as_str().expect("a target's expr").to_owned();
            for (name, value) in VARIABLES {
                expr = expr.replace(name, value);
            }
            assert!(!expr.contains('$'), "a variable the test does not know in {expr}");
            queries.push(Query {
                source: format!(
                    "panel {:?} query {}",
                    panel["title"].as_str().unwrap_or_default(),
                    target["refId"].as_str().unwrap_or_default()
                ),
                expr,
            });
        }
    }
    queries
}

/// The PrometheusRule's rule groups, as a rule file (JSON is YAML).
fn rule_groups() -> Value {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus-rules.yaml"))
        .expect("reading deploy/prometheus-rules.yaml");
    let rule: Value = serde_saphyr::from_str(&text).expect("the PrometheusRule is YAML");
    rule["spec"].clone()
}

fn rule_queries(groups: &Value) -> Vec<Query> {
    groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .map(|r| Query {
            source: format!("alert {}", r["alert"].as_str().unwrap_or_default()),
            expr: r["expr"].as_str().expect("a rule's expr").to_owned(),
        })
        .collect()
}

/// The vector selectors of `expr` (`metric{matchers}`), each a query of its own.
fn selectors(expr: &str) -> Vec<String> {
    let pattern = regex::Regex::new(r"[a-zA-Z_:][a-zA-Z0-9_:]*\{[^}]*\}").expect("a regex");
    pattern.find_iter(expr).map(|m| m.as_str().to_owned()).collect()
}

/// The series of a range query's answer that have at least one number (not NaN).
fn with_numbers(data: &Value) -> usize {
    data["result"]
        .as_array()
        .expect("a result")
        .iter()
        .filter(|series| {
            series["values"].as_array().into_iter().flatten().any(|v| {
                v[1].as_str()
                    .is_some_and(|n| n.parse::<f64>().is_ok_and(|x| !x.is_nan()))
            })
        })
        .count()
}

#[tokio::test]
async fn every_query_of_the_dashboard_and_the_rules_returns_its_series_through_a_rollout() {
    let fleet = Fleet::new("dashboard", 3).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    // Node 0 waits behind a blocking pod until the test removes it: the blocked panel has a node.
    create_pod(
        scope,
        "long-job",
        &names[0],
        json!({ "runtime": "long" }),
        json!({}),
    )
    .await;
    let observer = Observer::start(scope, 1, &[]).await;
    // The agent keeps running a few seconds after asking for its reboot, as on a host shutting
    // down, so a scrape sees its drain's duration before the reboot resets it.
    let options = NodeOptions {
        reboot_delay: Duration::from_secs(3),
        ..NodeOptions::default()
    };
    let sims = fleet.start_all(
        &options,
        &["--concurrency=1", "--blocking-pod-selector=runtime=long"],
    );
    let groups = rule_groups();
    let ports: Vec<u16> = sims.iter().map(|s| s.metrics_port).collect();
    let prometheus = Prometheus::scraping(JOB, &ports, &groups.to_string()).await;
    let start = jiff::Timestamp::now().as_second() - 10;

    let blocked = format!(
        r#"kured_reboot_blocked{{node="{}", reason="blocker_pod"}} == 1"#,
        names[0]
    );
    prometheus
        .until_answered(&blocked, Duration::from_secs(120))
        .await;
    delete_pod(scope, "long-job").await;
    observer
        .assert_each_rebooted_once(&sims, Duration::from_secs(240))
        .await;
    // The last reboot counted, as Prometheus scraped it.
    let reboots = format!(r#"sum(max by (node) (kured_reboots_total{{job="{JOB}"}})) == 3"#);
    prometheus.until_answered(&reboots, Duration::from_secs(60)).await;
    let end = jiff::Timestamp::now().as_second();
    let (start, end) = (start.to_string(), end.to_string());
    let range = |expr: &str| {
        let expr = expr.to_owned();
        let (start, end) = (start.clone(), end.clone());
        let prometheus = &prometheus;
        async move {
            prometheus
                .api(
                    "query_range",
                    &[("query", &expr), ("start", &start), ("end", &end), ("step", "1")],
                )
                .await
        }
    };

    let mut failures = Vec::new();
    let dashboard = dashboard_queries();
    let rules = rule_queries(&groups);
    assert!(
        dashboard.len() >= 15,
        "the dashboard's queries: {}",
        dashboard.len()
    );
    assert_eq!(rules.len(), 5, "the rules' expressions");
    // Every panel's query parses and shows the rollout: a series with numbers.
    for query in &dashboard {
        match range(&query.expr).await {
            Ok(data) if with_numbers(&data) > 0 => {}
            Ok(data) => failures.push(format!(
                "{}: {} has no series with a value: {data}",
                query.source, query.expr
            )),
            Err(e) => failures.push(format!("{}: {e}", query.source)),
        }
    }
    // Every rule's expression parses, and each metric it selects has series: none is misspelt,
    // none filters on a label the agents' series lack.
    for query in dashboard.iter().chain(&rules) {
        let found = selectors(&query.expr);
        if found.is_empty() {
            failures.push(format!("{}: no selector found in {}", query.source, query.expr));
        }
        for selector in found {
            match range(&selector).await {
                Ok(data) if with_numbers(&data) > 0 => {}
                Ok(_) => failures.push(format!("{}: {selector} selects no series", query.source)),
                Err(e) => failures.push(format!("{}: {e}", query.source)),
            }
        }
    }
    for query in &rules {
        if let Err(e) = prometheus.api("query", &[("query", &query.expr)]).await {
            failures.push(format!("{}: {e}", query.source));
        }
    }
    // Prometheus loaded the rules and evaluates them without error.
    let loaded = prometheus.api("rules", &[]).await.expect("the rules");
    let evaluated: Vec<(String, String)> = loaded["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_owned(),
                format!("{} {}", r["health"], r["lastError"]),
            )
        })
        .collect();
    assert_eq!(evaluated.len(), rules.len(), "rules loaded: {evaluated:?}");
    for (name, health) in &evaluated {
        if !health.starts_with("\"ok\"") {
            failures.push(format!("alert {name} evaluates as {health}"));
        }
    }
    // The node variable's values: every node of the fleet.
    let nodes = prometheus
        .api(
            "label/node/values",
            &[
                ("match[]", &format!(r#"kured_reboot_required{{job=~"{JOB}"}}"#)),
                ("start", &start),
                ("end", &end),
            ],
        )
        .await
        .expect("the node variable's values");
    let nodes: BTreeSet<&str> = nodes
        .as_array()
        .expect("values")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let expected: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(nodes, expected, "the node variable lists the fleet");

    assert!(
        failures.is_empty(),
        "{} of the dashboard's and the rules' queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
