//! deployd: takes an application's source to a running, verified Cloud Run
//! service. See ARCHITECTURE.md for the map.

pub mod analysis;
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deployments;
pub mod gcp;
pub mod pipeline;
pub mod probe;
pub mod promql;
pub mod sandbox;
pub mod store;
pub mod telemetry;
pub mod tls;
