//! The README's first command: `basalt up` starts a 3-node loopback cluster, creates the
//! volume `demo`, prints its NBD URI, serves it to a real client, and stops every node on
//! Ctrl-C (SIGINT).
//!
//! Uses the quick start's fixed addresses (127.0.0.1-3, default ports); no other test does.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn basalt_up_serves_demo_over_nbd_and_stops_on_ctrl_c() {
    let dir = tempfile::Builder::new()
        .prefix("basalt-up-")
        .tempdir_in(std::env::var_os("BASALT_TEST_DIR").unwrap_or_else(|| "/var/tmp".into()))
        .expect("temp dir");
    let data_dir = dir.path().join("data");
    let blockd = common::workspace_bin("blockd");
    assert!(blockd.exists());
    let mut up = Command::new(common::workspace_bin("basalt"))
        .args(["up", "--drive-size", "512M", "--data-dir"])
        .arg(&data_dir)
        // Outside `cargo run`: use the blockd next to basalt instead of building one.
        .env_remove("CARGO")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start basalt up");

    let uri_line = wait_for_uri(&mut up);
    assert!(
        uri_line.contains("nbd://127.0.0.1:10809/demo"),
        "unexpected URI line: {uri_line}"
    );

    let info = Command::new("nbdinfo")
        .arg("--json")
        .arg("nbd://127.0.0.1:10809/demo")
        .output()
        .expect("run nbdinfo");
    assert!(info.status.success(), "nbdinfo failed: {info:?}");
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("\"export-size\": 1073741824"),
        "nbdinfo: {text}"
    );

    // Ctrl-C: basalt stops the nodes cleanly and exits.
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(up.id().to_string())
        .status();
    let status = common::wait_for(Duration::from_secs(60), || up.try_wait().ok().flatten())
        .unwrap_or_else(|| {
            let _ = up.kill();
            panic!("basalt up did not exit within 60 s of SIGINT");
        });
    assert!(status.success(), "basalt up exited with {status}");
    let leftover = Command::new("pgrep")
        .arg("-f")
        .arg(data_dir.join("node1.toml"))
        .output()
        .expect("pgrep");
    assert!(
        leftover.stdout.is_empty(),
        "blockd still running after basalt up stopped: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}

/// Reads `basalt up`'s stdout until the NBD URI line (at most 90 s) and returns it.
fn wait_for_uri(up: &mut Child) -> String {
    // Collect stdout lines on a thread so the wait below is bounded.
    let stdout = up.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(line) => {
                let found = line.contains("NBD export:");
                printed.push(line.clone());
                if found {
                    return line;
                }
            }
            Err(_) => {
                let _ = up.kill();
                panic!(
                    "basalt up printed no NBD URI within 90 s:\n{}",
                    printed.join("\n")
                );
            }
        }
    }
}
