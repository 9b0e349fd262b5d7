//! `EquivocationProof::decode_and_verify` on arbitrary bytes.
//!
//! Properties of an accepted proof: each side is a verified catalog entry on its own (canonical,
//! re-decodable by `SignedCatalogEntry::decode` under the same limits); both are of one product
//! and revision with different ids, ordered by id; `merge` of either onto the other reports this
//! very proof and keeps the entry with the smaller id; and `encode` then `decode_and_verify`
//! gives an equal proof.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mesh_protocol::EquivocationProof;
use mesh_protocol_fuzz::{check_equivocation_proof, config, exercise_error};

fuzz_target!(|data: &[u8]| {
    let config = config();
    match EquivocationProof::decode_and_verify(Bytes::copy_from_slice(data), &config) {
        Ok(proof) => check_equivocation_proof(&proof, &config),
        Err(e) => exercise_error(&e, e.kind()),
    }
});
