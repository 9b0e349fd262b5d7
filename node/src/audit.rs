//! Offline audit of a stored log (`meshnode verify`): every event re-verified, the chain
//! checked from seq 1, the stored head and the replica compared with what the log implies.

use std::collections::HashMap;

use bytes::Bytes;
use mesh_protocol::{
    Config, LogHead, Operation, ProductId, RejectReason, SignedEvent, VerifiedEvent, verify_batch,
};
use serde::Serialize;

use crate::store::{Store, StoreError};

/// Events read per step of the audit.
const PAGE: usize = 4096;

/// One thing wrong with a stored log.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The position, as far as it is known (the n-th stored event).
    pub seq: u64,
    pub problem: String,
}

/// What an audit found.
#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    pub product: ProductId,
    pub events: u64,
    pub head_seq: u64,
    pub head_id: Option<String>,
    pub records: usize,
    pub forks: usize,
    pub problems: Vec<Problem>,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Audits `product`'s log in `store`.
pub fn audit(
    store: &dyn Store,
    product: &ProductId,
    config: &Config,
) -> Result<AuditReport, StoreError> {
    let mut problems = Vec::new();
    let mut head = LogHead::empty(product.clone());
    let mut replica: HashMap<Bytes, Option<Bytes>> = HashMap::new();
    let mut position = 0u64;
    loop {
        let page = store.log_range(product, position + 1, PAGE)?;
        if page.is_empty() {
            break;
        }
        // Decode the page, then verify it as one batch (as ingest does).
        let mut checked: Vec<Result<VerifiedEvent, RejectReason>> = Vec::with_capacity(page.len());
        let mut decoded = Vec::with_capacity(page.len());
        let mut slots = Vec::with_capacity(page.len());
        for bytes in page {
            match SignedEvent::decode(bytes, config) {
                Ok(e) => {
                    slots.push(Some(checked.len()));
                    checked.push(Err(RejectReason::Verify(
                        mesh_protocol::VerifyError::BadSignature,
                    )));
                    decoded.push(e);
                }
                Err(e) => {
                    slots.push(None);
                    checked.push(Err(e.into()));
                }
            }
        }
        let mut verified = verify_batch(decoded).into_iter();
        for slot in slots.into_iter().flatten() {
            if let Some(result) = verified.next() {
                checked[slot] = result.map_err(RejectReason::from);
            }
        }
        for result in checked {
            position += 1;
            let event = match result {
                Ok(e) => e,
                Err(e) => {
                    problems.push(Problem {
                        seq: position,
                        problem: format!("does not verify [{}]: {e}", e.kind()),
                    });
                    continue;
                }
            };
            if let Err(e) = head.validate_next(&event) {
                problems.push(Problem {
                    seq: event.seq(),
                    problem: format!("breaks the chain [{}]: {e}", e.kind()),
                });
            }
            // Go on from this event either way, so one break does not hide the rest.
            head = LogHead::at(&event);
            let e = event.event();
            let value = match e.op {
                Operation::Upsert => Some(e.payload.clone()),
                Operation::Delete => None,
            };
            replica.insert(e.key.clone(), value);
        }
    }
    let stored_head = store.log_head(product)?;
    match (stored_head, head.id()) {
        (None, None) => {}
        (Some(s), Some(id)) if s.seq == head.seq() && s.id == id => {}
        (s, _) => problems.push(Problem {
            seq: head.seq(),
            problem: format!(
                "stored head {:?} does not match the last stored event (seq {})",
                s.map(|h| h.seq),
                head.seq()
            ),
        }),
    }
    let mut records = 0;
    for (key, expected) in &replica {
        let stored = store.replica_get(product, key)?;
        if stored.as_ref() != expected.as_ref() {
            problems.push(Problem {
                seq: head.seq(),
                problem: format!(
                    "replica record {:?} disagrees with the log",
                    String::from_utf8_lossy(key)
                ),
            });
        }
        records += usize::from(expected.is_some());
    }
    Ok(AuditReport {
        product: product.clone(),
        events: position,
        head_seq: head.seq(),
        head_id: head.id().map(|id| id.to_string()),
        records,
        forks: store.forks(Some(product))?.len(),
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use mesh_protocol::{ProductName, SecretKey};

    #[test]
    fn a_clean_log_audits_clean_and_counts_live_records() {
        let key = SecretKey::from_bytes(&[1; 32]);
        let product = ProductId::new(key.public(), ProductName::new("p").unwrap());
        let store = MemoryStore::new();
        let mut head = LogHead::empty(product.clone());
        let mut events = Vec::new();
        for (k, op) in [
            ("a", Operation::Upsert),
            ("b", Operation::Upsert),
            ("a", Operation::Delete),
        ] {
            let payload = if op == Operation::Upsert {
                Bytes::from("{}")
            } else {
                Bytes::new()
            };
            let e = head
                .next_event(1, op, Bytes::from(k), payload, vec![])
                .sign(&key, &Config::default())
                .unwrap();
            head.advance(&e).unwrap();
            events.push(e);
        }
        store.log_append(&product, &events).unwrap();
        let report = audit(&store, &product, &Config::default()).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!((report.events, report.head_seq, report.records), (3, 3, 1));
    }
}
