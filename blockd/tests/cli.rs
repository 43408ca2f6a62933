//! The `basalt` CLI against the in-process API server: volume create/list/show/resize/delete,
//! node and cluster commands, `--json` output, and the exit codes (1 refused, 2 usage,
//! 3 unreachable).

#![allow(clippy::unwrap_used)]

#[path = "api_support/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Output;
use std::sync::OnceLock;

use common::{ADMIN_TOKEN, Cluster, READ_TOKEN, start};
use serde_json::Value;

/// The `basalt` binary next to this test's target directory, built (or brought up to date)
/// once per test run with the cargo that runs the tests.
fn basalt_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/cli-<hash> → target/<profile>
            let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = std::process::Command::new(cargo);
            build.args(["build", "--quiet", "-p", "basalt", "--bin", "basalt"]);
            // Cargo gives the test the variables it gives a crate's build (CARGO_MANIFEST_DIR,
            // CARGO_PKG_NAME, ...); build scripts that watch them (ring's) would otherwise see
            // them change and rebuild here and again in the next `cargo test`.
            for (key, _) in std::env::vars_os() {
                let Some(key) = key.to_str() else { continue };
                let crate_var = ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_"]
                    .iter()
                    .any(|prefix| key.starts_with(prefix))
                    || matches!(
                        key,
                        "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "CARGO_RUSTC_CURRENT_DIR"
                            | "OUT_DIR"
                    );
                if crate_var {
                    build.env_remove(key);
                }
            }
            if profile_dir
                .file_name()
                .is_some_and(|name| name == "release")
            {
                build.arg("--release");
            }
            let status = build.status().unwrap();
            assert!(status.success(), "building basalt failed");
            let binary = profile_dir.join("basalt");
            assert!(binary.is_file(), "{} missing", binary.display());
            binary
        })
        .clone()
}

/// Runs `basalt` with `args` against `api` with `token` (none when `None`).
async fn run_at(api: &str, token: Option<&str>, args: &[&str]) -> Output {
    let binary = tokio::task::spawn_blocking(basalt_binary).await.unwrap();
    let mut command = tokio::process::Command::new(binary);
    command
        .env_remove("BASALT_API")
        .env_remove("BASALT_TOKEN")
        .env_remove("CARGO")
        .arg("--api")
        .arg(api)
        .args(args)
        .kill_on_drop(true);
    if let Some(token) = token {
        command.env("BASALT_TOKEN", token);
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), command.output())
        .await
        .expect("basalt took over 60 s")
        .unwrap();
    eprintln!(
        "basalt {args:?} -> {:?}\n{}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

async fn run(cluster: &Cluster, args: &[&str]) -> Output {
    run_at(&cluster.base, Some(ADMIN_TOKEN), args).await
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_commands() {
    let cluster = start().await;
    let created = run(
        &cluster,
        &["--json", "volume", "create", "db-1", "--size", "10G"],
    )
    .await;
    assert_eq!(created.status.code(), Some(0));
    let volume = stdout_json(&created);
    assert_eq!(volume["name"], "db-1");
    assert_eq!(volume["size_bytes"], 10u64 << 30);
    assert_eq!(volume["replicas"], 3);

    let created = run(
        &cluster,
        &[
            "volume",
            "create",
            "logs",
            "--size",
            "512M",
            "--replicas",
            "2",
        ],
    )
    .await;
    assert_eq!(created.status.code(), Some(0));
    assert!(stdout(&created).contains("512MiB"), "{}", stdout(&created));

    let list = run(&cluster, &["volume", "list", "--json"]).await;
    assert_eq!(list.status.code(), Some(0));
    let names: Vec<String> = stdout_json(&list)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["db-1", "logs"]);

    let table = run(&cluster, &["volume", "list"]).await;
    assert_eq!(table.status.code(), Some(0));
    let text = stdout(&table);
    assert!(
        text.contains("NAME") && text.contains("db-1") && text.contains("10GiB"),
        "{text}"
    );

    let show = run(&cluster, &["volume", "show", "db-1"]).await;
    assert_eq!(show.status.code(), Some(0));
    assert!(stdout(&show).contains("10GiB"));

    let resized = run(
        &cluster,
        &["--json", "volume", "resize", "db-1", "--size", "20G"],
    )
    .await;
    assert_eq!(resized.status.code(), Some(0));
    assert_eq!(stdout_json(&resized)["size_bytes"], 20u64 << 30);

    let deleted = run(&cluster, &["volume", "delete", "logs"]).await;
    assert_eq!(deleted.status.code(), Some(0));
    assert!(stdout(&deleted).contains("deleted volume logs"));
    let list = run(&cluster, &["--json", "volume", "list"]).await;
    assert_eq!(stdout_json(&list)["volumes"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_cluster_commands() {
    let cluster = start().await;
    let status = run(&cluster, &["cluster", "status"]).await;
    assert_eq!(status.status.code(), Some(0));
    let text = stdout(&status);
    assert!(text.contains("3 up, 0 down, 0 out"), "{text}");
    assert!(text.contains("map epoch"), "{text}");
    let status = run(&cluster, &["--json", "cluster", "status"]).await;
    assert_eq!(stdout_json(&status)["leader"], 1);

    let nodes = run(&cluster, &["--json", "node", "list"]).await;
    assert_eq!(nodes.status.code(), Some(0));
    assert_eq!(stdout_json(&nodes)["nodes"].as_array().unwrap().len(), 3);
    let nodes = run(&cluster, &["node", "list"]).await;
    assert!(stdout(&nodes).contains("127.0.0.3:10809"));
    let node = run(&cluster, &["--json", "node", "show", "2"]).await;
    assert_eq!(stdout_json(&node)["id"], 2);

    cluster.register_node(4);
    // `out` on a live node drains it (`drain` is the same command).
    let out = run(&cluster, &["--json", "node", "drain", "4"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout_json(&out)["state"], "draining");
    let up = run(&cluster, &["node", "up", "4"]).await;
    assert_eq!(up.status.code(), Some(0));

    // An initialised cluster refuses another id.
    let init = run(&cluster, &["cluster", "init"]).await;
    assert_eq!(init.status.code(), Some(1));
    let id = cluster.cluster_id();
    let init = run(
        &cluster,
        &["--json", "cluster", "init", "--cluster-id", &id],
    )
    .await;
    assert_eq!(init.status.code(), Some(0));
    assert_eq!(stdout_json(&init)["cluster_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes() {
    let cluster = start().await;
    let ok = run(&cluster, &["volume", "create", "v", "--size", "1G"]).await;
    assert_eq!(ok.status.code(), Some(0));

    // 1: the server refused.
    let refusals: [&[&str]; 6] = [
        &["volume", "create", "v", "--size", "1G"],
        &["volume", "create", "v2", "--size", "0"],
        &["volume", "create", "Bad", "--size", "1G"],
        &["volume", "resize", "v", "--size", "1M"],
        &["volume", "show", "ghost"],
        &["node", "show", "42"],
    ];
    for args in refusals {
        let output = run(&cluster, args).await;
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(!output.stderr.is_empty());
    }
    let refused = run(&cluster, &["--json", "volume", "show", "ghost"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(stdout_json(&refused)["type"], "volume-not-found");
    // A missing or read-only token is a refusal too.
    let no_token = run_at(&cluster.base, None, &["volume", "list"]).await;
    assert_eq!(no_token.status.code(), Some(1));
    let read_only = run_at(&cluster.base, Some(READ_TOKEN), &["volume", "delete", "v"]).await;
    assert_eq!(read_only.status.code(), Some(1));
    let read_only = run_at(&cluster.base, Some(READ_TOKEN), &["volume", "list"]).await;
    assert_eq!(read_only.status.code(), Some(0));

    // 2: usage.
    let usage: [&[&str]; 5] = [
        &["volume", "create", "v3"],
        &["volume", "create", "v3", "--size", "1.5G"],
        &["volume", "frobnicate"],
        &["node", "show", "not-a-number"],
        &["--bogus"],
    ];
    for args in usage {
        let output = run(&cluster, args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
    let bad_url = run_at("not a url", Some(ADMIN_TOKEN), &["volume", "list"]).await;
    assert_eq!(bad_url.status.code(), Some(2));

    // 3: unreachable (nothing listens on a port we just closed).
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let api = format!("http://{closed}");
    for args in [
        &["volume", "list"][..],
        &["volume", "create", "v4", "--size", "1G"],
        &["cluster", "status"],
    ] {
        let output = run_at(&api, Some(ADMIN_TOKEN), args).await;
        assert_eq!(output.status.code(), Some(3), "{args:?}");
    }
    // The server still serves; nothing was created by the failed calls.
    let list = run(&cluster, &["--json", "volume", "list"]).await;
    assert_eq!(stdout_json(&list)["volumes"].as_array().unwrap().len(), 1);
}
