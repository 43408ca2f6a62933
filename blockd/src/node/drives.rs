//! Opening a node's drives at start-up: a configured file that does not exist yet (and has a
//! `size`) is created and formatted; an existing drive must belong to this cluster and node.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use basalt::config::NodeConfig;
use basalt::ids::{ClusterId, DriveId};

use crate::metrics::Metrics;
use crate::metrics::drive::DriveIo;
use crate::store::handle::EngineWrap;
use crate::store::{Expect, FormatOptions, OpenOptions, Store, format};

/// The stores of a node's drives, by drive id.
pub type Stores = BTreeMap<DriveId, Arc<Store>>;

/// Opens (creating and formatting where configured) every drive of `config`. With
/// `metrics.enabled`, also creates the node's metric families (the drives' engines measure
/// device I/O into them from the first operation) and returns them.
pub async fn open_all(
    config: &NodeConfig,
    cluster_id: ClusterId,
) -> anyhow::Result<(Stores, Option<Arc<Metrics>>)> {
    let metrics = (config.metrics.enabled).then(|| Arc::new(Metrics::new(config.node_id)));
    let metrics = metrics.as_ref();
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
        let io = metrics.map(|_| Arc::new(DriveIo::default()));
        let wrap: EngineWrap = match &io {
            Some(io) => DriveIo::wrapper(io),
            None => Box::new(|engine| engine),
        };
        let store = Store::open_wrapped(&drive.path, opts, wrap)
            .await
            .with_context(|| format!("{key}: open"))?;
        let id = store.superblock().drive_id;
        let store = Arc::new(store);
        if stores.insert(id, Arc::clone(&store)).is_some() {
            bail!("{key}: drive id {id} is configured twice");
        }
        if let (Some(metrics), Some(io)) = (metrics, io) {
            metrics.drives.add(store, io);
        }
    }
    Ok((stores, metrics.cloned()))
}
