//! The monitoring files shipped in `packaging/`: the Grafana dashboards are valid (parse,
//! unique panel ids, a data source and a query on every panel, every variable defined), and
//! the Prometheus alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`). Whether every query returns data from a live cluster is checked
//! by `metrics_prometheus.rs`.
//!
//! `promtool` comes from the Debian package `prometheus` (installed by `scripts/test`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging")
}

/// Every dashboard file, parsed.
fn dashboards() -> Vec<(String, Value)> {
    let dir = packaging().join("grafana/dashboards");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards directory") {
        let path = entry.expect("dashboard entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            found.push((path.display().to_string(), json));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Panels, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels array") {
        all.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// `$name` and `${name}` references in `text` (Grafana's variable syntax).
fn variables_used(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let braced = bytes.get(i + 1) == Some(&b'{');
            let start = i + 1 + usize::from(braced);
            let end = start
                + text[start..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(text.len() - start);
            if end > start {
                used.insert(text[start..end].to_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    used
}

/// Grafana's built-in variables.
const BUILTIN: [&str; 4] = ["__rate_interval", "__interval", "__range", "__range_s"];

/// Goal: the three dashboards the issue names exist and each is valid: panel ids unique,
/// every panel (rows aside) has the `${DS_PROMETHEUS}` data source and at least one target
/// with a query, and every variable a query or data source uses is defined by the dashboard's
/// templating (or built in); the import input `DS_PROMETHEUS` is declared.
#[test]
fn dashboards_are_valid() {
    let all = dashboards();
    let titles: BTreeSet<&str> = all
        .iter()
        .filter_map(|(_, d)| d["title"].as_str())
        .collect();
    for title in ["Basalt cluster overview", "Basalt volume", "Basalt node"] {
        assert!(
            titles.contains(title),
            "no dashboard titled {title:?}: {titles:?}"
        );
    }
    let mut uids = BTreeSet::new();
    for (path, dashboard) in &all {
        let uid = dashboard["uid"].as_str().unwrap_or_default();
        assert!(
            !uid.is_empty() && uids.insert(uid.to_owned()),
            "{path}: uid {uid:?}"
        );
        let inputs = dashboard["__inputs"].as_array().expect("__inputs");
        assert!(
            inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"),
            "{path}: __inputs"
        );
        let defined: BTreeSet<String> = dashboard["templating"]["list"]
            .as_array()
            .expect("templating.list")
            .iter()
            .map(|v| v["name"].as_str().expect("variable name").to_owned())
            .chain(BUILTIN.iter().map(|b| (*b).to_owned()))
            .collect();
        assert!(
            defined.contains("DS_PROMETHEUS"),
            "{path}: DS_PROMETHEUS variable"
        );
        let mut ids = BTreeSet::new();
        for panel in panels(dashboard) {
            let title = panel["title"].as_str().unwrap_or_default();
            let id = panel["id"].as_u64().expect("panel id");
            assert!(ids.insert(id), "{path}: panel id {id} ({title}) repeated");
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(
                panel["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{path}: {title}"
            );
            let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
            assert!(!targets.is_empty(), "{path}: panel {title:?} has no target");
            for target in targets {
                let expr = target["expr"].as_str().unwrap_or_default();
                assert!(!expr.trim().is_empty(), "{path}: {title}: empty query");
                for used in variables_used(expr) {
                    assert!(
                        defined.contains(&used),
                        "{path}: {title}: ${used} undefined"
                    );
                }
            }
        }
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let text = variable.to_string();
            for used in variables_used(&text) {
                assert!(defined.contains(&used), "{path}: variable uses ${used}");
            }
        }
    }
}

/// Runs `promtool` with `args` in `packaging/prometheus`; panics with its output on failure.
fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(packaging().join("prometheus"))
        .output()
        .expect("run promtool (Debian package `prometheus`)");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Goal: the alert rules and the example scrape config are valid, and every alert behaves as
/// its unit test (synthetic series) says: fires after its `for`, not before, and with the
/// documented labels and annotations.
#[test]
fn alert_rules_pass_promtool() {
    promtool(&["check", "rules", "basalt-alerts.yml"]);
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["test", "rules", "basalt-alerts.test.yml"]);
}

/// Goal: the Grafana provisioning files exist and name the dashboards directory.
#[test]
fn grafana_provisioning_is_shipped() {
    let dir = packaging().join("grafana/provisioning");
    let dashboards =
        std::fs::read_to_string(dir.join("dashboards/basalt.yml")).expect("dashboard provider");
    assert!(dashboards.contains("type: file") && dashboards.contains("path:"));
    let datasource = std::fs::read_to_string(dir.join("datasources/prometheus.yml"))
        .expect("data source example");
    assert!(datasource.contains("type: prometheus"));
}

/// Goal: the variable scanner finds both syntaxes and nothing else.
#[test]
fn variable_scanner() {
    let used = variables_used(r#"rate(x{a="$volume",b="${job}"}[$__rate_interval]) $"#);
    let expected: BTreeSet<String> = ["volume", "job", "__rate_interval"]
        .map(String::from)
        .into();
    assert_eq!(used, expected);
}
