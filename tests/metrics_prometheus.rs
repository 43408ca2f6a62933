//! Metrics against a real Prometheus server (issue 6): a 3-node cluster of `blockd`
//! processes on 127.0.71.1-3, scraped by a `prometheus` process this test starts on
//! 127.0.0.1 with a generated config (1 s scrape and evaluation intervals, storage in a
//! temporary directory) and the shipped alert rules with their `for:` windows scaled down.
//!
//! Checked through Prometheus' HTTP query API, after a short fio load: every metric family
//! has series; every PromQL query of every dashboard panel parses and returns data, with the
//! dashboard's variables resolved from Prometheus as Grafana would; every alert rule
//! evaluates without error; killing a node makes the node-down and PG-degraded alerts fire.
//!
//! `prometheus` and `fio` come from `scripts/test` (Debian packages `prometheus`, `fio`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use basalt::api::VolumeCreateRequest;
use basalt::api::client::Client;
use basalt::size::Size;
use common::{ADMIN_TOKEN, ClusterSpec, Http, TestCluster, wait_for};
use serde_json::Value;

/// This test's loopback network: 127.0.71.x.
const NET: u8 = 71;
/// Bound on the cluster forming, a volume appearing, Prometheus starting.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on the alerts after a node is killed: detection (`down_after`, 3 s), the scaled
/// `for` windows (at most 10 s) and scrape/evaluation intervals, with room for slow machines.
const ALERT_TIMEOUT: Duration = Duration::from_secs(90);
/// `for:` windows of the rules are divided by this (5m → 10 s, 1m → 2 s).
const FOR_SCALE: u64 = 30;
/// What `$__rate_interval` becomes: several scrapes at 1 s.
const RATE_INTERVAL: &str = "20s";
const VOLUME: &str = "prom";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Prometheus server; killed when dropped (also when the test panics).
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `line` with a `for:` duration divided by [`FOR_SCALE`] (at least 1 s unless zero).
fn scale_for(line: &str) -> String {
    let Some((indent, value)) = line.split_once("for: ") else {
        return line.to_owned();
    };
    let value = value.trim();
    let (number, unit) = value.split_at(value.len() - 1);
    let seconds: u64 = number.parse().expect("for: <number><unit>");
    let seconds = match unit {
        "s" => seconds,
        "m" => seconds * 60,
        "h" => seconds * 3600,
        other => panic!("unexpected unit {other:?} in {line:?}"),
    };
    let scaled = if seconds == 0 {
        0
    } else {
        (seconds / FOR_SCALE).max(1)
    };
    format!("{indent}for: {scaled}s")
}

impl Prometheus {
    /// Starts Prometheus on a free 127.0.0.1 port, scraping `targets` every second with the
    /// shipped rules (`for:` scaled), and waits until it is ready.
    fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("basalt-prometheus-")
            .tempdir_in(std::env::var_os("BASALT_TEST_DIR").unwrap_or_else(|| "/var/tmp".into()))
            .expect("temp dir");
        let rules = std::fs::read_to_string(repo().join("packaging/prometheus/basalt-alerts.yml"))
            .expect("read alert rules");
        let scaled: Vec<String> = rules
            .lines()
            .map(|line| {
                if line.trim_start().starts_with("for: ") {
                    scale_for(line)
                } else {
                    line.to_owned()
                }
            })
            .collect();
        std::fs::write(dir.path().join("rules.yml"), scaled.join("\n")).expect("write rules");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yml\n\
             scrape_configs:\n  - job_name: basalt\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write config");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--storage.tsdb.retention.time=1h")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian package `prometheus`)");
        let prometheus = Prometheus {
            child,
            url: format!("http://{listen}"),
            _dir: dir,
        };
        let http = Http::new();
        let ready = wait_for(READY_TIMEOUT, || {
            let reply = http
                .get(&format!("{}/-/ready", prometheus.url), None)
                .ok()?;
            (reply.status == 200).then_some(())
        });
        assert!(
            ready.is_some(),
            "prometheus not ready\n{}",
            prometheus.log()
        );
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` with query parameters; the `data` of a successful answer, or the
    /// error Prometheus gave.
    fn api(&self, http: &Http, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/{path}", self.url), params)
            .map_err(|e| e.to_string())?;
        let reply = http.get(url.as_str(), None)?;
        if reply.json["status"] == "success" {
            Ok(reply.json["data"].clone())
        } else {
            Err(format!("{} {}", reply.status, reply.text))
        }
    }

    /// An instant query's result vector.
    fn query(&self, http: &Http, promql: &str) -> Result<Vec<Value>, String> {
        let data = self.api(http, "query", &[("query", promql)])?;
        match &data["result"] {
            Value::Array(result) => Ok(result.clone()),
            // A scalar (e.g. `time() - 1`) is one value.
            scalar => Ok(vec![scalar.clone()]),
        }
    }
}

/// A port nothing listens on at the moment (bound, then released for Prometheus).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Creates the test volume through node 1, retrying while the cluster forms.
fn create_volume(cluster: &TestCluster) {
    let rt = runtime();
    let client = Client::new(
        &cluster.api_url(1),
        Some(ADMIN_TOKEN.into()),
        Duration::from_secs(10),
    )
    .expect("API client");
    let request = VolumeCreateRequest {
        name: VOLUME.into(),
        size: Size(64 << 20),
        replicas: None,
    };
    let mut last = String::new();
    let created = wait_for(READY_TIMEOUT, || {
        match rt.block_on(client.create_volume(&request, Some(VOLUME))) {
            Ok(view) => Some(view),
            Err(e) => {
                last = e.to_string();
                std::thread::sleep(Duration::from_millis(400));
                None
            }
        }
    });
    assert!(
        created.is_some(),
        "create volume: {last}\n{}",
        cluster.logs()
    );
}

/// Runs fio (random 4 KiB reads and writes, 16 in flight) on node `n`'s export for `seconds`.
fn fio_load(cluster: &TestCluster, n: u8, seconds: u32) {
    let uri = format!("--uri=nbd://{}/{VOLUME}", cluster.nbd_addr(n));
    let runtime = format!("--runtime={seconds}");
    let output = Command::new("timeout")
        .args(["120", "fio", "--name=load", "--ioengine=nbd", &uri])
        .args(["--rw=randrw", "--bs=4k", "--iodepth=16", "--size=32m"])
        .args(["--time_based", &runtime, "--output-format=terse"])
        .output()
        .expect("run fio");
    assert!(
        output.status.success(),
        "fio failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
}

/// Every family the issue names (histograms by their `_bucket` series).
const FAMILIES: [&str; 41] = [
    // per volume
    "basalt_volume_ops_total",
    "basalt_volume_bytes_total",
    "basalt_volume_latency_seconds_bucket",
    "basalt_volume_in_flight_requests",
    "basalt_volume_errors_total",
    "basalt_volume_size_bytes",
    // per drive
    "basalt_drive_capacity_bytes",
    "basalt_drive_allocated_bytes",
    "basalt_drive_free_bytes",
    "basalt_drive_queue_depth",
    "basalt_drive_io_latency_seconds_bucket",
    "basalt_drive_checksum_errors_total",
    "basalt_drive_journal_used_bytes",
    "basalt_drive_journal_size_bytes",
    "basalt_drive_journal_batches_total",
    "basalt_drive_journal_records_total",
    // replication
    "basalt_pgs",
    "basalt_recovery_remaining_bytes",
    "basalt_recovery_remaining_objects",
    "basalt_recovery_bytes_total",
    "basalt_recovery_objects_total",
    "basalt_swept_chunks_total",
    "basalt_scrub_progress_ratio",
    "basalt_scrub_chunks_total",
    "basalt_scrub_repairs_total",
    "basalt_scrub_last_completed_timestamp_seconds",
    "basalt_replica_write_latency_seconds_bucket",
    // cluster and metadata
    "basalt_node_state",
    "basalt_node_heartbeat_age_seconds",
    "basalt_map_epoch",
    "basalt_raft_term",
    "basalt_raft_leader_id",
    "basalt_raft_is_leader",
    "basalt_raft_commit_index",
    "basalt_raft_applied_index",
    // frontends and API
    "basalt_nbd_connections",
    "basalt_nbd_handshake_failures_total",
    "basalt_nbd_protocol_errors_total",
    "basalt_api_requests_total",
    "basalt_drive_io_errors_total",
    "basalt_raft_has_leader",
];

/// Families a node reports only for volumes it exports (the load ran through node 1).
const PER_EXPORT: [&str; 7] = [
    "basalt_volume_ops_total",
    "basalt_volume_bytes_total",
    "basalt_volume_latency_seconds_bucket",
    "basalt_volume_in_flight_requests",
    "basalt_volume_errors_total",
    "basalt_nbd_connections",
    "basalt_nbd_protocol_errors_total",
];

/// Checks that every family has series (on every node, unless it is per export), and every
/// PG state its gauge.
fn check_families(prometheus: &Prometheus, http: &Http) {
    for family in FAMILIES {
        let result = prometheus
            .query(http, &format!("count by (instance) ({family})"))
            .unwrap_or_else(|e| panic!("{family}: {e}"));
        let nodes = if PER_EXPORT.contains(&family) { 1 } else { 3 };
        assert!(
            result.len() >= nodes,
            "{family} is reported by {} nodes, expected {nodes}: {result:?}",
            result.len()
        );
    }
    for state in [
        "active",
        "degraded",
        "peering",
        "recovering",
        "backfilling",
        "inactive",
    ] {
        let promql = format!("basalt_pgs{{state=\"{state}\"}}");
        let result = prometheus.query(http, &promql).expect("pgs query");
        assert!(!result.is_empty(), "no {promql} series");
    }
    let active = prometheus
        .query(http, "max(basalt_pgs{state=\"active\"})")
        .expect("active PGs");
    assert_ne!(active[0]["value"][1], "0", "no active PG: {active:?}");
}

/// Every dashboard file, parsed.
fn dashboards() -> Vec<(String, Value)> {
    let dir = repo().join("packaging/grafana/dashboards");
    let mut found: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("dashboards directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path: PathBuf| {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let json = serde_json::from_str(&text).expect("dashboard JSON");
            (name_of(&path), json)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Replaces `$name` in `text` by the values chosen so far (longest names first, so `$job`
/// never eats into `$jobs`).
fn substitute(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|name| std::cmp::Reverse(name.len()));
    let mut out = text.to_owned();
    for name in names {
        out = out.replace(&format!("${{{name}}}"), &values[name]);
        out = out.replace(&format!("${name}"), &values[name]);
    }
    out
}

/// Resolves a dashboard's query variables in order, as Grafana does: `label_values(selector,
/// label)` becomes a series lookup, and the first value found is chosen ("All" = `.*` where
/// the variable allows it). Panics if a variable has no value.
fn resolve_variables(
    prometheus: &Prometheus,
    http: &Http,
    file: &str,
    dashboard: &Value,
) -> BTreeMap<String, String> {
    let mut values = BTreeMap::from([("__rate_interval".to_owned(), RATE_INTERVAL.to_owned())]);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = variable["name"].as_str().expect("variable name").to_owned();
        if variable["type"] != "query" {
            continue;
        }
        let definition = variable["definition"]
            .as_str()
            .expect("variable definition");
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{file}: ${name}: unsupported query {definition}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let selector = substitute(selector.trim(), &values);
        let series = prometheus
            .api(http, "series", &[("match[]", selector.as_str())])
            .unwrap_or_else(|e| panic!("{file}: ${name}: {e}"));
        let first = series
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|s| s[label.trim()].as_str().map(str::to_owned));
        let Some(first) = first else {
            panic!("{file}: variable ${name} ({definition}) resolves to nothing");
        };
        let chosen = if variable["includeAll"] == true {
            variable["allValue"].as_str().unwrap_or(".*").to_owned()
        } else {
            first
        };
        values.insert(name, chosen);
    }
    values
}

/// Every panel query of every dashboard parses and returns at least one series.
fn check_dashboards(prometheus: &Prometheus, http: &Http) {
    let mut checked = 0;
    for (file, dashboard) in dashboards() {
        let values = resolve_variables(prometheus, http, &file, &dashboard);
        let panels = dashboard["panels"].as_array().expect("panels");
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = substitute(target["expr"].as_str().expect("expr"), &values);
                // Retried briefly: a rate needs two scrapes of a series created late.
                let mut last = Err(String::new());
                let ok = wait_for(Duration::from_secs(15), || {
                    last = prometheus.query(http, &expr);
                    last.as_ref().is_ok_and(|r| !r.is_empty()).then_some(())
                });
                assert!(
                    ok.is_some(),
                    "{file}: panel {title:?}: {expr} returned {last:?}"
                );
                checked += 1;
            }
        }
    }
    eprintln!("{checked} dashboard queries returned data");
    assert!(checked > 50, "only {checked} dashboard queries");
}

/// Every alert rule Prometheus loaded has been evaluated without error, and its query parses
/// on its own.
fn check_rules(prometheus: &Prometheus, http: &Http) {
    let mut last = String::new();
    let evaluated = wait_for(Duration::from_secs(30), || {
        let data = prometheus.api(http, "rules", &[]).ok()?;
        let rules: Vec<Value> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        last = serde_json::to_string_pretty(&rules).unwrap_or_default();
        let done = rules.len() >= 9
            && rules
                .iter()
                .all(|r| r["health"] == "ok" && r["lastEvaluation"] != "0001-01-01T00:00:00Z");
        done.then_some(rules)
    });
    let rules = evaluated.unwrap_or_else(|| panic!("rules not all evaluated healthy:\n{last}"));
    for rule in rules {
        let query = rule["query"].as_str().expect("rule query");
        prometheus
            .query(http, query)
            .unwrap_or_else(|e| panic!("rule {}: {query}: {e}", rule["name"]));
    }
}

/// The state (`pending`, `firing`) of alert `name` whose labels include `labels`, if active.
fn alert_state(
    prometheus: &Prometheus,
    http: &Http,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<String> {
    let data = prometheus.api(http, "alerts", &[]).ok()?;
    data["alerts"].as_array()?.iter().find_map(|alert| {
        let matches = alert["labels"]["alertname"] == name
            && labels.iter().all(|(k, v)| alert["labels"][*k] == *v);
        matches.then(|| alert["state"].as_str().unwrap_or_default().to_owned())
    })
}

/// Goal: the metrics, dashboards and alerts work end to end against a live Prometheus.
/// Method: 3 nodes and Prometheus (1 s scrapes), fio load, then the checks in the module
/// documentation; finally node 3 is killed and the node-down and PG-degraded alerts must
/// fire (their `for` windows divided by 30).
#[test]
fn prometheus_scrapes_dashboards_and_alerts() {
    let mut cluster = TestCluster::start(&ClusterSpec::new(NET, 3));
    let targets: Vec<String> = (1..=3)
        .map(|n| format!("{}:9640", common::ip(NET, n)))
        .collect();
    let prometheus = Prometheus::start(&targets);
    let http = Http::new();
    let formed = cluster.wait_formed(&http, 3, READY_TIMEOUT);
    assert!(formed.is_some(), "cluster not formed\n{}", cluster.logs());
    create_volume(&cluster);
    let up = wait_for(READY_TIMEOUT, || {
        let result = prometheus.query(&http, "up{job=\"basalt\"} == 1").ok()?;
        (result.len() == 3).then_some(())
    });
    assert!(up.is_some(), "targets not up\n{}", prometheus.log());

    // Open by default (`api.open_metrics`): no token, the OpenMetrics content type.
    let scrape = http
        .get(&format!("{}/metrics", cluster.api_url(2)), None)
        .expect("GET /metrics");
    assert_eq!(scrape.status, 200, "{}", scrape.text);
    let content_type = scrape.headers.get("content-type").map(|v| v.as_bytes());
    assert!(
        content_type.is_some_and(|v| v.starts_with(b"application/openmetrics-text")),
        "{content_type:?}"
    );
    assert!(scrape.text.ends_with("# EOF\n"), "{}", scrape.text);

    fio_load(&cluster, 1, 8);
    // A few more scrapes, so every rate has two samples after the load.
    std::thread::sleep(Duration::from_secs(3));

    check_families(&prometheus, &http);
    check_dashboards(&prometheus, &http);
    check_rules(&prometheus, &http);

    let killed = Instant::now();
    cluster.kill(3);
    for (alert, labels) in [
        ("BasaltNodeDown", &[("node", "3")][..]),
        ("BasaltPgDegraded", &[][..]),
    ] {
        let mut seen = Vec::new();
        let firing = wait_for(ALERT_TIMEOUT, || {
            let state = alert_state(&prometheus, &http, alert, labels)?;
            if seen.last() != Some(&state) {
                eprintln!("{alert}: {state} {:?} after the kill", killed.elapsed());
                seen.push(state.clone());
            }
            (state == "firing").then_some(())
        });
        assert!(
            firing.is_some(),
            "{alert} never fired (states seen: {seen:?})\n{}",
            cluster.logs()
        );
    }
}

/// Goal: `for:` windows scale as documented and other lines stay as they are.
#[test]
fn for_windows_scale() {
    assert_eq!(scale_for("        for: 5m"), "        for: 10s");
    assert_eq!(scale_for("        for: 1m"), "        for: 2s");
    assert_eq!(scale_for("        for: 1h"), "        for: 120s");
    assert_eq!(scale_for("        for: 0m"), "        for: 0s");
    assert_eq!(scale_for("        for: 10s"), "        for: 1s");
}
