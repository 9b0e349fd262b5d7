//! `ForkProof::decode_and_verify` on arbitrary bytes.
//!
//! Properties of an accepted proof: two events of one product at one seq with different ids,
//! ordered by id; each is a verified event on its own (canonical, re-decodable by
//! `SignedEvent::decode` under the same limits); `ForkProof::new` is order-independent; and
//! `encode` then `decode_and_verify` gives an equal proof.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mesh_protocol::ForkProof;
use mesh_protocol_fuzz::{check_fork_proof, config, exercise_error};

fuzz_target!(|data: &[u8]| {
    let config = config();
    match ForkProof::decode_and_verify(Bytes::copy_from_slice(data), &config) {
        Ok(proof) => check_fork_proof(&proof, &config),
        Err(e) => exercise_error(&e, e.kind()),
    }
});
