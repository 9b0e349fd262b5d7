//! Record-level lineage: from a record of a product back through the upstream events its
//! events cite, across products, to the source events.
//!
//! Each hop is checked as it is taken: the cited event is read from the logs this node holds,
//! its signature verified again, and its id compared with the id the citation names — a
//! citation pins one exact event, so a log that forked after the citation is detected here.
//! A cited event this node does not hold is reported as unavailable, with the peers that hold
//! its log, rather than silently dropped.

use std::collections::{HashSet, VecDeque};

use mesh_protocol::{EventId, EventRef, ProductId, SignedEvent, VerifiedEvent};
use serde::{Deserialize, Serialize};

use crate::node::{EventView, NodeError, Shared, event_view};

/// Most events one trace visits: a record derived from very many upstream events still gets an
/// answer, marked truncated.
pub const TRACE_EVENTS_MAX: usize = 1000;
/// Events read per step when looking for a key's latest event.
const SCAN_CHUNK: usize = 1024;

/// One event reached by a trace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceStep {
    pub product: ProductId,
    pub seq: u64,
    pub id: String,
    /// Hops from the traced record (0 = the record's own latest event).
    pub depth: u32,
    /// `verified`; `unavailable` (this node holds no such event); `mismatch` (the event held
    /// at that seq has another id: the log forked, or the citation is wrong); or why the held
    /// event does not verify.
    pub status: String,
    /// The event, when it was found and verified.
    pub event: Option<EventView>,
    /// Peers holding the product's log, where a missing event could be fetched.
    pub holders: Vec<String>,
}

/// A record traced back to its sources.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trace {
    pub product: ProductId,
    pub key: String,
    pub steps: Vec<TraceStep>,
    /// Verified events that cite nothing: where the record's data came from.
    pub sources: Vec<EventRef>,
    /// Cited events that could not be checked here.
    pub unavailable: usize,
    pub truncated: bool,
}

/// Traces the latest event of `key` in `product` back to its sources.
pub fn trace(shared: &Shared, product: &ProductId, key: &[u8]) -> Result<Trace, NodeError> {
    let head = shared
        .store
        .log_head(product)?
        .ok_or_else(|| NodeError::NotFound(format!("this node holds no log of {product}")))?;
    let latest = latest_event_of_key(shared, product, key, head.seq)?.ok_or_else(|| {
        NodeError::NotFound(format!(
            "no event with key {:?} in {product}",
            String::from_utf8_lossy(key)
        ))
    })?;

    let mut steps = Vec::new();
    let mut sources = Vec::new();
    let mut unavailable = 0;
    // By id too: two citations of one position with different ids are a fork to show.
    let mut seen: HashSet<(ProductId, u64, EventId)> = HashSet::new();
    let mut queue: VecDeque<(EventRef, u32)> = VecDeque::from([(latest.to_ref(), 0)]);
    let mut truncated = false;
    while let Some((cited, depth)) = queue.pop_front() {
        if !seen.insert((cited.product.clone(), cited.seq, cited.id)) {
            continue;
        }
        if steps.len() == TRACE_EVENTS_MAX {
            truncated = true;
            break;
        }
        let (status, event) = match fetch(shared, &cited) {
            Ok(Some(event)) if event.id() == cited.id => ("verified".to_owned(), Some(event)),
            Ok(Some(_)) => ("mismatch".to_owned(), None),
            Ok(None) => ("unavailable".to_owned(), None),
            Err(reason) => (reason, None),
        };
        let holders = if event.is_none() {
            unavailable += 1;
            shared
                .discovery
                .holders(&cited.product)
                .iter()
                .map(ToString::to_string)
                .collect()
        } else {
            Vec::new()
        };
        if let Some(event) = &event {
            let causes = &event.event().causes;
            if causes.is_empty() {
                sources.push(cited.clone());
            }
            queue.extend(causes.iter().map(|c| (c.clone(), depth + 1)));
        }
        steps.push(TraceStep {
            product: cited.product.clone(),
            seq: cited.seq,
            id: cited.id.to_string(),
            depth,
            status,
            event: event.as_ref().map(|e| event_view(e, "verified".to_owned())),
            holders,
        });
    }
    Ok(Trace {
        product: product.clone(),
        key: String::from_utf8_lossy(key).into_owned(),
        steps,
        sources,
        unavailable,
        truncated,
    })
}

/// The event at `cited`'s position in a log this node holds, verified again. `Ok(None)` when
/// the node does not hold it; `Err` with the reason when the stored bytes do not verify.
fn fetch(shared: &Shared, cited: &EventRef) -> Result<Option<VerifiedEvent>, String> {
    let bytes = shared
        .store
        .log_range(&cited.product, cited.seq, 1)
        .map_err(|e| format!("store: {e}"))?;
    let Some(bytes) = bytes.into_iter().next() else {
        return Ok(None);
    };
    let event = VerifiedEvent::decode_and_verify(bytes, &shared.protocol)
        .map_err(|e| format!("stored event does not verify: {e}"))?;
    if event.seq() != cited.seq || event.product() != &cited.product {
        return Ok(None);
    }
    Ok(Some(event))
}

/// The most recent event of `key` in `product`, scanning back from `head_seq`.
fn latest_event_of_key(
    shared: &Shared,
    product: &ProductId,
    key: &[u8],
    head_seq: u64,
) -> Result<Option<VerifiedEvent>, NodeError> {
    let mut end = head_seq;
    while end >= 1 {
        let start = end.saturating_sub(SCAN_CHUNK as u64 - 1).max(1);
        let chunk = shared
            .store
            .log_range(product, start, (end - start + 1) as usize)?;
        for bytes in chunk.into_iter().rev() {
            // Compare keys on the decoded event; verify only the one that matches.
            let signed = SignedEvent::decode(bytes, &shared.protocol)
                .map_err(|e| NodeError::Internal(format!("stored event does not decode: {e}")))?;
            if signed.unverified().key.as_ref() == key {
                let event = signed.verify().map_err(|e| {
                    NodeError::Internal(format!("stored event does not verify: {e}"))
                })?;
                return Ok(Some(event));
            }
        }
        end = start - 1;
    }
    Ok(None)
}
