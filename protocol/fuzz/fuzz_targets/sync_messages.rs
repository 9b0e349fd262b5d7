//! The sync protocols' messages on arbitrary bytes: `CatalogDigest`, `CatalogSyncRequest`,
//! `BucketResponse` (catalog anti-entropy) and `SubscribeRequest`, `SubscribeResponse`,
//! `LogFrame` (log streams). The first input byte picks the message (mod 6), the rest is it.
//!
//! Properties of an accepted message: it keeps its limits (a digest has every bucket or none, a bucket
//! request names a bucket that exists and at most `bucket_versions_max` versions, a bucket
//! response no entry over `catalog_entry_bytes_max`, a frame at most `frame_events_max` events,
//! a subscription starts at seq >= 1); `encode` is within `frame_bytes_max`, no longer than
//! the input, and decodes back to an equal message. The events, entries and fork proof a
//! frame or response carries then go through their own decoders (and targets).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mesh_protocol::sync::{
    BucketResponse, CatalogDigest, CatalogSyncRequest, LogFrame, SubscribeRequest,
    SubscribeResponse,
};
use mesh_protocol::{Config, ForkProof, SignedCatalogEntry, SignedEvent, verify_batch};
use mesh_protocol_fuzz::{check_fork_proof, check_verified_event, config, exercise_error};

/// Decodes, and for an accepted message checks the round trip and the size of its encoding.
fn round_trip<T: PartialEq + std::fmt::Debug>(
    input: &[u8],
    config: &Config,
    decode: impl Fn(Bytes, &Config) -> Result<T, mesh_protocol::DecodeError>,
    encode: impl Fn(&T) -> Bytes,
) -> Option<T> {
    match decode(Bytes::copy_from_slice(input), config) {
        Ok(message) => {
            let encoded = encode(&message);
            assert!(
                encoded.len() <= config.frame_bytes_max,
                "encoding over the frame limit"
            );
            assert!(
                encoded.len() <= input.len(),
                "canonical encoding ({} bytes) longer than the input ({} bytes)",
                encoded.len(),
                input.len()
            );
            let again = decode(encoded, config).expect("an encoded message decodes");
            assert_eq!(again, message, "round trip changed the message");
            Some(message)
        }
        Err(e) => {
            exercise_error(&e, e.kind());
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    let config = config();
    match which % 6 {
        0 => {
            round_trip(input, &config, CatalogDigest::decode, CatalogDigest::encode);
        }
        1 => {
            if let Some(CatalogSyncRequest::Bucket { bucket, have }) = round_trip(
                input,
                &config,
                CatalogSyncRequest::decode,
                CatalogSyncRequest::encode,
            ) {
                assert!((bucket as usize) < mesh_protocol::sync::CATALOG_BUCKETS);
                assert!(have.len() <= config.bucket_versions_max);
            }
        }
        2 => {
            if let Some(response) = round_trip(
                input,
                &config,
                BucketResponse::decode,
                BucketResponse::encode,
            ) {
                for entry in response.entries {
                    assert!(entry.len() <= config.catalog_entry_bytes_max);
                    if let Ok(signed) = SignedCatalogEntry::decode(entry, &config) {
                        let _ = signed.verify();
                    }
                }
            }
        }
        3 => {
            if let Some(request) = round_trip(
                input,
                &config,
                SubscribeRequest::decode,
                SubscribeRequest::encode,
            ) {
                assert!(request.from_seq >= 1);
                // Keys are validated when used, not when decoded (see `PublicKey`); the text
                // form parses back whenever the key is a usable one.
                if request.product.owner().validate().is_ok() {
                    assert_eq!(
                        request.product.to_string().parse().ok(),
                        Some(request.product)
                    );
                }
            }
        }
        4 => {
            round_trip(
                input,
                &config,
                SubscribeResponse::decode,
                SubscribeResponse::encode,
            );
        }
        _ => {
            if let Some(frame) = round_trip(input, &config, LogFrame::decode, LogFrame::encode) {
                assert!(frame.events.len() <= config.frame_events_max);
                assert!(frame.fork.as_ref().is_none_or(|f| !f.is_empty()));
                let events: Vec<SignedEvent> = frame
                    .events
                    .into_iter()
                    .filter_map(|e| SignedEvent::decode(e, &config).ok())
                    .collect();
                for verified in verify_batch(events).into_iter().flatten() {
                    check_verified_event(&verified, &config);
                }
                if let Some(Ok(proof)) =
                    frame.fork.map(|f| ForkProof::decode_and_verify(f, &config))
                {
                    check_fork_proof(&proof, &config);
                }
            }
        }
    }
});
