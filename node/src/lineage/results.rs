//! What lineage queries answer: plain data, sorted, with a JSON form (see `render.rs` for the
//! two types whose `Serialize` is written by hand).

use mesh_protocol::{ProductId, PublicKey};
use serde::{Deserialize, Serialize};

use super::Direction;

/// The kind of evidence for an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EdgeKind {
    /// Declared in the descriptor and observed as a subscription.
    Both,
    /// Declared in the descriptor, but the owner's node does not subscribe.
    DeclaredOnly,
    /// Subscribed to, but not declared in the descriptor.
    ObservedOnly,
}

/// One product reached by a walk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageNode {
    pub product: ProductId,
    pub name: String,
    /// `None` when the product is missing.
    pub domain: Option<String>,
    /// The descriptor's owner (team or contact); `None` when the product is missing.
    pub owner: Option<String>,
    /// The key of the node that owns the product, from its id: known even when it is missing.
    pub owner_key: PublicKey,
    /// The fewest hops from the walk's root.
    pub hops: u32,
    /// Referenced as an input, but without a catalog entry.
    pub missing: bool,
    /// When the product's entry was signed, microseconds since the Unix epoch.
    pub updated_micros: Option<u64>,
}

/// An edge `from -> to`: `to` is derived from `from`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LineageEdge {
    pub from: ProductId,
    pub to: ProductId,
    /// `to`'s descriptor lists `from` among its inputs.
    pub declared: bool,
    /// `to`'s owner node subscribes to `from`.
    pub observed: bool,
}

impl LineageEdge {
    pub fn kind(&self) -> EdgeKind {
        match (self.declared, self.observed) {
            (true, false) => EdgeKind::DeclaredOnly,
            (false, true) => EdgeKind::ObservedOnly,
            // An edge has at least one kind of evidence; `(false, false)` only comes from
            // hand-written JSON, and drawing it plainly is the least surprising.
            _ => EdgeKind::Both,
        }
    }
}

/// The result of a walk: the products within `depth` hops of `root` and the edges followed.
///
/// `nodes` are sorted by hops, then product id (`root` first); `edges` by `from`, then `to`.
/// Serializes as its fields would with `derive(Serialize)`, but prints each product id once
/// (see `render.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Lineage {
    pub root: ProductId,
    pub direction: Direction,
    pub depth: u32,
    pub nodes: Vec<LineageNode>,
    pub edges: Vec<LineageEdge>,
}

/// What a change to `product` may affect: every product downstream within `depth` hops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impact {
    pub product: ProductId,
    pub depth: u32,
    /// Sorted by hops, then product id. The product itself is not listed.
    pub affected: Vec<Affected>,
    /// The descriptor owners of the affected products: most affected products first.
    pub owners: Vec<OwnerImpact>,
}

/// A product downstream of a changed product. Serializes as with `derive(Serialize)`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Affected {
    pub product: ProductId,
    pub domain: String,
    pub owner: String,
    pub owner_key: PublicKey,
    pub hops: u32,
}

/// One owner (descriptor `owner`) with affected products.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerImpact {
    pub owner: String,
    /// How many of the owner's products are affected.
    pub products: usize,
    /// The fewest hops from the changed product to one of them.
    pub nearest_hops: u32,
}

/// A product whose input has no catalog entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MissingInput {
    pub product: ProductId,
    pub input: ProductId,
    pub declared: bool,
    pub observed: bool,
}

/// Problems in the lineage graph, reported rather than hidden. Every list is sorted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageHealth {
    /// Inputs (declared or observed) that no catalog entry describes.
    pub missing_inputs: Vec<MissingInput>,
    /// Sets of products that are derived from each other, each sorted; a product that is its own
    /// input is a cycle of one.
    pub cycles: Vec<Vec<ProductId>>,
    /// Subscriptions that the consuming product does not declare.
    pub undeclared_consumption: Vec<LineageEdge>,
    /// Declared inputs that the owner's node does not subscribe to.
    pub declared_not_consumed: Vec<LineageEdge>,
    /// The full length of each list, also after [`truncate`](LineageHealth::truncate).
    pub totals: HealthTotals,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthTotals {
    pub missing_inputs: usize,
    pub cycles: usize,
    pub undeclared_consumption: usize,
    pub declared_not_consumed: usize,
}

impl LineageHealth {
    /// Whether no problem of any kind was found.
    pub fn is_healthy(&self) -> bool {
        self.totals == HealthTotals::default()
    }

    /// Keeps at most `items_max` items in each list, e.g. for an API response; `totals` still
    /// says how many there are.
    pub fn truncate(&mut self, items_max: usize) {
        self.missing_inputs.truncate(items_max);
        self.cycles.truncate(items_max);
        self.undeclared_consumption.truncate(items_max);
        self.declared_not_consumed.truncate(items_max);
    }
}
