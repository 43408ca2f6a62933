//! The node's NBD exports: every volume in the cluster view, served through the gateway.
//!
//! One [`GatewayVolume`] per volume is shared by all connections to it, so a FLUSH on any
//! connection covers writes completed on every other one (what `CAN_MULTI_CONN` promises).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::frontends::{ExportEntry, Exports};
use crate::gateway::{Gateway, GatewayVolume, VolumeSpec};
use crate::metrics::volume::{Metered, VolumeMetrics};
use crate::view::MapWatch;

/// Exports every volume of the current cluster view.
pub struct ClusterExports {
    gateway: Gateway,
    maps: MapWatch,
    volumes: Mutex<HashMap<String, Arc<Metered<GatewayVolume>>>>,
    metrics: Option<VolumeMetrics>,
}

impl ClusterExports {
    /// Exports over `gateway`, naming volumes from `maps`, counting requests into `metrics`.
    pub fn new(gateway: Gateway, maps: MapWatch, metrics: Option<VolumeMetrics>) -> Self {
        ClusterExports {
            gateway,
            maps,
            volumes: Mutex::new(HashMap::new()),
            metrics,
        }
    }
}

impl Exports for ClusterExports {
    type Volume = Metered<GatewayVolume>;

    fn get(&self, name: &str) -> Option<Arc<Metered<GatewayVolume>>> {
        let view = self.maps.current();
        let volume = view.volumes.get(name)?;
        let spec = VolumeSpec {
            id: volume.id,
            pool: volume.pool,
            size_bytes: volume.size_bytes,
            read_only: false,
        };
        let mut cache = self.volumes.lock().ok()?;
        if let Some(cached) = cache.get(name)
            && *cached.inner().spec() == spec
        {
            return Some(Arc::clone(cached));
        }
        match self.gateway.volume(spec) {
            Ok(volume) => {
                let handles = self.metrics.as_ref().map(|m| m.handles(name));
                let volume = Arc::new(Metered::new(volume, handles));
                cache.insert(name.to_owned(), Arc::clone(&volume));
                Some(volume)
            }
            Err(e) => {
                tracing::warn!(volume = name, error = %e, "volume cannot be exported");
                None
            }
        }
    }

    fn list(&self) -> Vec<ExportEntry> {
        self.maps
            .current()
            .volumes
            .iter()
            .map(|(name, volume)| ExportEntry {
                name: name.clone(),
                description: format!("Basalt volume {} ({} bytes)", volume.id, volume.size_bytes),
            })
            .collect()
    }
}
