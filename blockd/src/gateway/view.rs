//! The gateway's map source is the node-wide [`crate::view`]: re-exported here so gateway
//! users need one import path.

pub use crate::view::{ClusterView, MapPublisher, MapWatch, map_channel};
