//! `verify_batch` against one-by-one `verify`.
//!
//! The input is split on `mesh_protocol_fuzz::BATCH_SEPARATOR` into at most 16 chunks; each chunk
//! that `SignedEvent::decode` accepts joins the batch. Property: `verify_batch` returns, in input
//! order, exactly what `verify` returns for each event alone (the same `Ok` event or the same
//! error), whatever the mix of good, forged, wrongly authored and invalid-key events. Verified
//! events also get the `signed_event` checks.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mesh_protocol::{SignedEvent, verify_batch};
use mesh_protocol_fuzz::{
    BATCH_EVENTS_MAX, BATCH_SEPARATOR, check_verified_event, config, exercise_error,
};

/// Splits on every occurrence of `separator`.
fn split<'a>(mut data: &'a [u8], separator: &[u8]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    while let Some(at) = data
        .windows(separator.len())
        .position(|window| window == separator)
    {
        chunks.push(&data[..at]);
        data = &data[at + separator.len()..];
    }
    chunks.push(data);
    chunks
}

fuzz_target!(|data: &[u8]| {
    let config = config();
    let events: Vec<SignedEvent> = split(data, BATCH_SEPARATOR)
        .into_iter()
        .take(BATCH_EVENTS_MAX)
        .filter_map(|chunk| SignedEvent::decode(Bytes::copy_from_slice(chunk), &config).ok())
        .collect();
    let singles: Vec<_> = events.iter().map(|e| e.clone().verify()).collect();
    let batch = verify_batch(events);
    assert_eq!(
        batch.len(),
        singles.len(),
        "verify_batch lost or added results"
    );
    for (i, (b, s)) in batch.iter().zip(&singles).enumerate() {
        assert_eq!(
            b,
            s,
            "verify_batch and verify disagree on event {i} of {}",
            singles.len()
        );
    }
    for result in &batch {
        match result {
            Ok(verified) => check_verified_event(verified, &config),
            Err(e) => exercise_error(e, e.kind()),
        }
    }
});
