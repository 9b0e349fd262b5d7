//! `meshsim`: seeded simulations of a data mesh, with the real node code and with the
//! protocol core alone.
//!
//! Two kinds of run answer the questions people ask before they deploy a mesh:
//!
//! - [`run()`]: **real nodes** — the `mesh-node` crate's own code, its libp2p stack (noise,
//!   yamux, gossipsub, Kademlia, identify, the log and catalog-sync streams) — in one process,
//!   over an in-process network ([`net`]) that delays, loses and partitions links and counts
//!   bytes. A scenario file ([`scenario`]) names the topology, the workload and the faults; a
//!   seed fixes the plan ([`plan`]): keys, links, products, subscriptions, every event and
//!   fault with its time. Gossip timers run on the wall clock, as in production, so a run is
//!   reproducible in its plan, not in its exact interleaving.
//! - [`model`]: **the protocol core alone** on a virtual clock — catalog merge, the
//!   anti-entropy summary and hash-chain checks of `mesh-protocol`, driven by a seeded
//!   discrete-event loop with delays, loss and partitions at thousands of nodes, the
//!   invariants checked after every step, and the seed printed on failure.
//!
//! What is measured and how is in [`report`] and `SIMULATIONS.md`; the gossip copies a node
//! receives are counted on the wire by a [`tap`] under the multiplexer, the same way for the
//! mesh node and for stock gossipsub ([`baseline`]).

pub mod baseline;
pub mod evil;
pub mod measure;
pub mod model;
pub mod net;
pub mod plan;
pub mod plot;
pub mod report;
pub mod run;
pub mod scenario;
pub mod tap;

pub use run::{Outcome, run};
pub use scenario::Scenario;
