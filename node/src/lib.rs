//! The data mesh node: one process per domain.
//!
//! A node holds the whole catalog and the logs of its own products and of the products it
//! subscribes to, and it serves every log it holds to peers allowed to read it. The
//! `mesh-protocol` crate decides what is valid; this crate moves bytes and keeps them:
//!
//! - [`network`]: the one event loop that owns the libp2p swarm (gossipsub for the catalog,
//!   identify, Kademlia under our own protocol name);
//! - [`sync_catalog`] and [`log_stream`]: the stream protocols for catalog anti-entropy and for
//!   log subscriptions, run in their own tasks;
//! - [`hub`]: every log's head, the group-committing appender and the ingest path;
//! - [`store`]: durable state behind a trait (sled on disk, or memory);
//! - [`node`]: [`start`] a node on a chosen transport and store, and drive it with a
//!   [`NodeHandle`].

pub mod api;
pub mod audit;
pub mod behaviour;
pub mod catalog;
pub mod codec;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod hub;
pub mod lineage;
pub mod log_stream;
pub mod metrics;
pub mod network;
pub mod node;
pub mod search;
pub mod store;
pub mod sync_catalog;
pub mod trace;

pub use config::NodeConfig;
pub use node::{NodeError, NodeHandle, NodeOptions, Status, TransportKind, start};
