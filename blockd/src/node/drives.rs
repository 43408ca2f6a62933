//! Opening a node's drives at start-up: a configured file that does not exist yet (and has a
//! `size`) is created and formatted; an existing drive must belong to this cluster and node.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use basalt::config::NodeConfig;
use basalt::ids::{ClusterId, DriveId};

use crate::store::{Expect, FormatOptions, OpenOptions, Store, format};

/// Opens (creating and formatting where configured) every drive of `config`.
pub async fn open_all(
    config: &NodeConfig,
    cluster_id: ClusterId,
) -> anyhow::Result<BTreeMap<DriveId, Arc<Store>>> {
    let mut stores = BTreeMap::new();
    for (i, drive) in config.drives.iter().enumerate() {
        let key = format!("drives[{i}].path {}", drive.path.display());
        if !drive.path.exists() {
            let Some(size) = drive.size else {
                bail!("{key}: does not exist (set drives[{i}].size to create a file-backed drive)");
            };
            if let Some(parent) = drive.path.parent() {
                std::fs::create_dir_all(parent).with_context(|| key.clone())?;
            }
            let opts = FormatOptions {
                cluster_id,
                node_id: config.node_id,
                drive_id: None,
                geometry: Default::default(),
                force: false,
            };
            let path = drive.path.clone();
            let created = tokio::task::spawn_blocking(move || format(&path, &opts, Some(size.0)))
                .await
                .context("format task")?;
            created.with_context(|| format!("{key}: format"))?;
            tracing::info!(drive = %drive.path.display(), size = size.0, "created and formatted drive");
        }
        let opts = OpenOptions {
            expect: Expect {
                cluster_id: Some(cluster_id),
                node_id: Some(config.node_id),
            },
            ..OpenOptions::default()
        };
        let store = Store::open(&drive.path, opts)
            .await
            .with_context(|| format!("{key}: open"))?;
        let id = store.superblock().drive_id;
        if stores.insert(id, Arc::new(store)).is_some() {
            bail!("{key}: drive id {id} is configured twice");
        }
    }
    Ok(stores)
}
