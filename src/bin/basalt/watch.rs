//! `basalt cluster status --watch`: polls `GET /v1/cluster` every interval and redraws health,
//! PG state counts and a progress bar of recovery (what is left against the most seen since
//! watching started) on a terminal; without one (a pipe, a log) it prints one line per
//! interval. Ctrl-C ends it.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use basalt::api::client::{Client, ClientError};
use basalt::api::{ClusterStatus, PgStatus};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Width of the progress bar, in characters.
const BAR_WIDTH: usize = 40;

/// Recovery progress against the most left seen since watching started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Most chunks left seen.
    pub max_objects: u64,
    /// Most bytes left seen.
    pub max_bytes: u64,
    /// Chunks left now.
    pub objects: u64,
    /// Bytes left now.
    pub bytes: u64,
}

impl Progress {
    /// Takes in the latest figures.
    pub fn observe(&mut self, status: &ClusterStatus) {
        let (objects, bytes) = status
            .recovery
            .as_ref()
            .map_or((0, 0), |r| (r.remaining_objects, r.remaining_bytes));
        self.objects = objects;
        self.bytes = bytes;
        self.max_objects = self.max_objects.max(objects);
        self.max_bytes = self.max_bytes.max(bytes);
    }

    /// Fraction done in 0..=1, by bytes when any were seen, else by chunks (1 when nothing
    /// was ever left).
    pub fn fraction(&self) -> f64 {
        let (left, max) = if self.max_bytes > 0 {
            (self.bytes, self.max_bytes)
        } else {
            (self.objects, self.max_objects)
        };
        if max == 0 {
            1.0
        } else {
            1.0 - left.min(max) as f64 / max as f64
        }
    }
}

/// `12.3 MiB`-style size (binary units, one decimal).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `120 active, 8 recovering`: the non-zero PG counts (all zero: `0 pgs`).
pub fn pg_counts(status: &ClusterStatus) -> String {
    let parts: Vec<String> = PgStatus::ALL
        .into_iter()
        .filter_map(|state| {
            let count = status.pgs.get(state);
            (count > 0).then(|| format!("{count} {}", state.label()))
        })
        .collect();
    if parts.is_empty() {
        "0 pgs".to_owned()
    } else {
        parts.join(", ")
    }
}

/// What is left to recover, `12 objects (48.0 MiB) left`.
pub fn remaining(progress: &Progress) -> String {
    format!(
        "{} objects ({}) left",
        progress.objects,
        human_bytes(progress.bytes)
    )
}

/// `", N draining"` when nodes are being drained, else empty (most clusters never drain).
pub fn draining(status: &ClusterStatus) -> String {
    match status.nodes.draining {
        0 => String::new(),
        n => format!(", {n} draining"),
    }
}

/// The one-line form (no terminal): health, nodes, PGs, what is left and the percentage.
pub fn line(status: &ClusterStatus, progress: &Progress) -> String {
    let mut text = format!(
        "health={} epoch={} nodes={}up/{}down/{}out{} pgs=[{}] recovery={} done={:.0}%",
        health(status),
        status.epoch,
        status.nodes.up,
        status.nodes.down,
        status.nodes.out,
        draining(status)
            .replace(", ", "/")
            .replace(" draining", "draining"),
        pg_counts(status),
        remaining(progress).replace(' ', "_"),
        progress.fraction() * 100.0,
    );
    if let Some(recovery) = status
        .recovery
        .as_ref()
        .filter(|r| !r.unreachable_nodes.is_empty())
    {
        text.push_str(&format!(" unreachable={:?}", recovery.unreachable_nodes));
    }
    text
}

fn health(status: &ClusterStatus) -> String {
    format!("{:?}", status.health).to_lowercase()
}

/// The terminal form's text above the bar.
fn header(status: &ClusterStatus) -> String {
    let mut text = format!(
        "health {}  ·  map epoch {}  ·  nodes {} up, {} down, {} out\npgs    {}",
        health(status),
        status.epoch,
        status.nodes.up,
        status.nodes.down,
        status.nodes.out,
        pg_counts(status),
    );
    if let Some(recovery) = status
        .recovery
        .as_ref()
        .filter(|r| !r.unreachable_nodes.is_empty())
    {
        text.push_str(&format!(
            "\n(no answer from nodes {:?}: their PGs show the map's state)",
            recovery.unreachable_nodes
        ));
    }
    text
}

/// Runs the watch until Ctrl-C. `json` prints each status as one line of JSON instead.
pub async fn run(client: &Client, interval: Duration, json: bool) -> Result<(), ClientError> {
    let tty = !json && std::io::stdout().is_terminal();
    let bar = if tty {
        let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stdout());
        let template = format!("{{msg}}\n[{{bar:{BAR_WIDTH}}}] {{percent:>3}}% {{prefix}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Some(bar)
    } else {
        None
    };
    let mut progress = Progress::default();
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = ticker.tick() => {}
        }
        let answer = tokio::select! {
            _ = &mut ctrl_c => break,
            answer = client.cluster_status() => answer,
        };
        match answer {
            Ok(status) => {
                progress.observe(&status);
                show(bar.as_ref(), json, &status, &progress);
            }
            // A node restarting is what one watches recovery for: keep going.
            Err(error) => match &bar {
                Some(bar) => bar.set_message(format!("(no answer: {error})")),
                None => println!("error={error}"),
            },
        }
        if bar.is_none() {
            let _ = std::io::stdout().flush();
        }
    }
    if let Some(bar) = bar {
        bar.abandon();
    }
    Ok(())
}

fn show(bar: Option<&ProgressBar>, json: bool, status: &ClusterStatus, progress: &Progress) {
    match bar {
        Some(bar) => {
            // The bar counts in per-mille of the larger measure (bytes when known).
            bar.set_length(1000);
            bar.set_position((progress.fraction() * 1000.0).round() as u64);
            bar.set_message(header(status));
            bar.set_prefix(remaining(progress));
        }
        None if json => match serde_json::to_string(status) {
            Ok(text) => println!("{text}"),
            Err(error) => eprintln!("basalt: cannot print JSON: {error}"),
        },
        None => println!("{}", line(status, progress)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt::api::{Health, NodeCounts, PgCounts, RecoveryView};

    fn status(objects: u64, bytes: u64) -> ClusterStatus {
        ClusterStatus {
            cluster_id: None,
            leader: Some(1),
            epoch: 7,
            nodes: NodeCounts {
                up: 3,
                down: 0,
                out: 0,
                draining: 0,
            },
            pgs: PgCounts {
                active: 10,
                recovering: 2,
                ..PgCounts::default()
            },
            volumes: 1,
            recovery: Some(RecoveryView {
                remaining_objects: objects,
                remaining_bytes: bytes,
                ..RecoveryView::default()
            }),
            health: Health::Degraded,
            raft: None,
        }
    }

    /// Goal: progress runs against the most seen, by bytes, and reads 100% when nothing is
    /// left or nothing ever was.
    #[test]
    fn progress_against_the_most_seen() {
        let mut progress = Progress::default();
        assert!((progress.fraction() - 1.0).abs() < f64::EPSILON);
        progress.observe(&status(10, 4000));
        assert!(progress.fraction().abs() < f64::EPSILON);
        progress.observe(&status(5, 1000));
        assert!((progress.fraction() - 0.75).abs() < 1e-9);
        progress.observe(&status(0, 0));
        assert!((progress.fraction() - 1.0).abs() < f64::EPSILON);
        assert_eq!(progress.max_objects, 10);
    }

    /// Goal: the one-line form names the health, the non-zero PG counts and what is left.
    #[test]
    fn one_line_form() {
        let mut progress = Progress::default();
        let status = status(3, 3 << 20);
        progress.observe(&status);
        let text = line(&status, &progress);
        assert!(
            text.starts_with("health=degraded epoch=7 nodes=3up/0down/0out"),
            "{text}"
        );
        assert!(text.contains("pgs=[10 active, 2 recovering]"), "{text}");
        assert!(
            text.contains("recovery=3_objects_(3.0_MiB)_left done=0%"),
            "{text}"
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
