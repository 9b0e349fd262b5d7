//! `SignedEvent::decode` on arbitrary bytes; whatever decodes is verified.
//!
//! Properties: decoded events keep every limit and shape rule; decoding is monotone in the
//! limits; `verify` and `verify_batch` of one event agree; a verified event's `encoded()` is
//! canonical and decodes + verifies back to an equal event; the chain rules and `ForkProof::new`
//! treat it consistently.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mesh_protocol::{SignedEvent, verify_batch};
use mesh_protocol_fuzz::{check_decoded_event, check_verified_event, config, exercise_error};

fuzz_target!(|data: &[u8]| {
    let config = config();
    let input = Bytes::copy_from_slice(data);
    let signed = match SignedEvent::decode(input.clone(), &config) {
        Ok(signed) => signed,
        Err(e) => return exercise_error(&e, e.kind()),
    };
    check_decoded_event(&input, &signed, &config);
    let single = signed.clone().verify();
    assert_eq!(
        verify_batch(vec![signed.clone()]),
        vec![single.clone()],
        "verify_batch of one event disagrees with verify"
    );
    match single {
        Ok(verified) => {
            assert_eq!(verified.id(), signed.id());
            assert_eq!(verified.event(), signed.unverified());
            check_verified_event(&verified, &config);
        }
        Err(e) => exercise_error(&e, e.kind()),
    }
});
