//! `SignedCatalogEntry::decode` on arbitrary bytes; whatever decodes is verified.
//!
//! Properties: decoded entries keep every limit and descriptor rule; decoding is monotone in the
//! limits; the descriptor survives being re-signed and sent on the wire again; a verified entry's
//! `encoded()` is canonical and decodes + verifies back to an equal entry; `merge` sees it as a
//! duplicate of itself.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mesh_protocol::SignedCatalogEntry;
use mesh_protocol_fuzz::{
    check_decoded_entry, check_descriptor_on_the_wire, check_verified_entry, config, exercise_error,
};

fuzz_target!(|data: &[u8]| {
    let config = config();
    let input = Bytes::copy_from_slice(data);
    let signed = match SignedCatalogEntry::decode(input.clone(), &config) {
        Ok(signed) => signed,
        Err(e) => return exercise_error(&e, e.kind()),
    };
    check_decoded_entry(&input, &signed, &config);
    check_descriptor_on_the_wire(&signed.unverified().descriptor, &config);
    match signed.clone().verify() {
        Ok(verified) => {
            assert_eq!(verified.id(), signed.id());
            assert_eq!(verified.entry(), signed.unverified());
            check_verified_entry(&verified, &config);
        }
        Err(e) => exercise_error(&e, e.kind()),
    }
});
