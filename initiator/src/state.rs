//! What the initiator attached, one JSON file per device under `/run/basalt/initiator/`
//! (tmpfs: gone at reboot, like the attachments). `list`, `detach VOLUME` and the supervisor
//! read it; the kernel's `NBD_CMD_STATUS` stays the authority on whether a device is connected.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Default directory of the state files.
pub const DEFAULT_STATE_DIR: &str = "/run/basalt/initiator";

/// One attached device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Device index (`/dev/nbd<index>`).
    pub index: u32,
    /// Device path.
    pub device: String,
    /// Volume name.
    pub volume: String,
    /// NBD export name.
    pub export_name: String,
    /// Size the device was attached with.
    pub size_bytes: u64,
    /// Transmission flags negotiated at attach; a replacement server must offer the same.
    pub transmission_flags: u16,
    /// Connections handed to the kernel.
    pub connections: u32,
    /// Server each connection slot was last connected to.
    pub servers: Vec<String>,
    /// Every endpoint of the volume known at attach (or last refresh), preferred first.
    pub endpoints: Vec<String>,
    /// API base URLs the endpoints came from (empty with `--server`).
    pub api: Vec<String>,
    /// Per-request timeout given to the kernel.
    pub timeout_secs: u64,
    /// Dead-connection timeout given to the kernel.
    pub dead_conn_timeout_secs: u64,
    /// Process id of the supervisor, if one runs.
    pub supervisor_pid: Option<u32>,
    /// Connections replaced since attach.
    pub reconnects: u64,
    /// Last supervisor transition, for `list`.
    pub last_event: String,
}

/// The directory of state files.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

fn state_error(path: &Path, error: io::Error) -> Error {
    Error::State {
        path: path.display().to_string(),
        error,
    }
}

impl StateDir {
    /// State files under `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file of device `index`.
    pub fn path(&self, index: u32) -> PathBuf {
        self.dir.join(format!("nbd{index}.json"))
    }

    /// Writes `state` atomically (temporary file, then rename).
    pub fn save(&self, state: &DeviceState) -> Result<(), Error> {
        std::fs::create_dir_all(&self.dir).map_err(|e| state_error(&self.dir, e))?;
        let path = self.path(state.index);
        let temporary = self.dir.join(format!(".nbd{}.json.tmp", state.index));
        let text = serde_json::to_vec_pretty(state)
            .map_err(|e| state_error(&path, io::Error::other(e)))?;
        std::fs::write(&temporary, text).map_err(|e| state_error(&temporary, e))?;
        std::fs::rename(&temporary, &path).map_err(|e| state_error(&path, e))
    }

    /// The state of device `index`, if recorded.
    pub fn load(&self, index: u32) -> Result<Option<DeviceState>, Error> {
        let path = self.path(index);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| state_error(&path, io::Error::other(e))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(state_error(&path, error)),
        }
    }

    /// Forgets device `index` (no error if it was not recorded).
    pub fn remove(&self, index: u32) -> Result<(), Error> {
        let path = self.path(index);
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(state_error(&path, error)),
            _ => Ok(()),
        }
    }

    /// Every recorded device, by index; unreadable files are skipped with a warning.
    pub fn all(&self) -> Result<Vec<DeviceState>, Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(state_error(&self.dir, error)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(index) = name
                .to_str()
                .and_then(|n| n.strip_prefix("nbd"))
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            match self.load(index) {
                Ok(Some(state)) => out.push(state),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "skipping unreadable state file"),
            }
        }
        out.sort_by_key(|state| state.index);
        Ok(out)
    }
}

/// Parses `/dev/nbdN` or `nbdN` into `N`.
pub fn parse_device(text: &str) -> Option<u32> {
    let name = text.strip_prefix("/dev/").unwrap_or(text);
    let digits = name.strip_prefix("nbd")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 6 {
        return None;
    }
    digits.parse().ok()
}

/// `/dev/nbd<index>`.
pub fn device_path(index: u32) -> String {
    format!("/dev/nbd{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(index: u32) -> DeviceState {
        DeviceState {
            index,
            device: device_path(index),
            volume: "vol".into(),
            export_name: "vol".into(),
            size_bytes: 1 << 30,
            transmission_flags: 0x16d,
            connections: 1,
            servers: vec!["127.0.0.1:10809".into()],
            endpoints: vec!["127.0.0.1:10809".into()],
            api: vec![],
            timeout_secs: 30,
            dead_conn_timeout_secs: 120,
            supervisor_pid: None,
            reconnects: 0,
            last_event: "attached".into(),
        }
    }

    #[test]
    fn save_load_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::new(dir.path().join("initiator"));
        assert!(states.all().unwrap().is_empty());
        states.save(&sample(3)).unwrap();
        states.save(&sample(1)).unwrap();
        std::fs::write(dir.path().join("initiator/notes.txt"), "x").unwrap();
        let all = states.all().unwrap();
        assert_eq!(all.iter().map(|s| s.index).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(states.load(3).unwrap(), Some(sample(3)));
        states.remove(3).unwrap();
        states.remove(3).unwrap();
        assert_eq!(states.load(3).unwrap(), None);
    }

    #[test]
    fn device_names() {
        assert_eq!(parse_device("/dev/nbd0"), Some(0));
        assert_eq!(parse_device("nbd12"), Some(12));
        for bad in ["/dev/sda", "nbd", "/dev/nbd-1", "nbd1x", "/dev/nbd99999999"] {
            assert_eq!(parse_device(bad), None, "{bad}");
        }
    }
}
