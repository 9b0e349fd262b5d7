//! Arbitrary bytes as a `CatalogEntryBody`, signed by the fixed fuzzing key.
//!
//! As `event_body` is to `signed_event`: the harness signs whatever body the fuzzer writes, so
//! the checks after a good signature run on arbitrary bodies and descriptors.
//!
//! Properties: as in `catalog_entry`; in addition, an entry correctly signed by the fixed key
//! verifies exactly when the body names that key as owner. Then a second entry of the same
//! product and revision is signed and the two are sent as an equivocation proof: an accepted
//! proof passes the `equivocation_proof` checks (each side decodable alone under the same
//! limits), and two verified entries of one revision with different ids are accepted as one.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mesh_protocol::wire::pb;
use mesh_protocol::{CatalogEntry, Descriptor, EquivocationProof, SignedCatalogEntry};
use mesh_protocol_fuzz::{
    check_decoded_entry, check_descriptor_on_the_wire, check_equivocation_proof,
    check_verified_entry, config, descriptor_yaml, entry_envelope, exercise_error, owner_key,
};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let config = config();
    let body = Bytes::copy_from_slice(data);
    let envelope = entry_envelope(body.clone());
    let input = Bytes::from(envelope.encode_to_vec());
    let verified = match SignedCatalogEntry::decode(input.clone(), &config) {
        Ok(signed) => {
            check_decoded_entry(&input, &signed, &config);
            check_descriptor_on_the_wire(&signed.unverified().descriptor, &config);
            let by_owner = signed.unverified().product.owner() == &owner_key().public();
            match signed.clone().verify() {
                Ok(verified) => {
                    assert!(by_owner, "verified an entry of another owner");
                    check_verified_entry(&verified, &config);
                    Some(verified)
                }
                Err(e) => {
                    assert!(
                        !by_owner,
                        "an entry signed by its owner does not verify: {e}"
                    );
                    exercise_error(&e, e.kind());
                    None
                }
            }
        }
        Err(e) => {
            exercise_error(&e, e.kind());
            None
        }
    };

    // A second entry of the body's product and revision, and a proof of the two.
    let Ok(raw) = pb::CatalogEntryBody::decode(body) else {
        return;
    };
    let Some(product) = raw.product.as_ref().and_then(|p| {
        let owner = mesh_protocol::PublicKey::from_bytes(&p.owner).ok()?;
        let name = mesh_protocol::ProductName::new(p.name.clone()).ok()?;
        Some(mesh_protocol::ProductId::new(owner, name))
    }) else {
        return;
    };
    let descriptor = Descriptor::from_yaml(&descriptor_yaml(product.name()), &config)
        .expect("the template descriptor is valid for any product name");
    let other = CatalogEntry {
        product,
        revision: raw.revision,
        timestamp_micros: raw.timestamp_micros.wrapping_add(1),
        descriptor,
        consumes: Vec::new(),
    };
    let Ok(other) = other.sign(&owner_key(), &config) else {
        return;
    };
    let other_envelope = pb::SignedCatalogEntry::decode(other.encoded().clone())
        .expect("a signed entry is protobuf");
    let proof_bytes = Bytes::from(
        pb::EquivocationProof {
            first: Some(envelope),
            second: Some(other_envelope),
        }
        .encode_to_vec(),
    );
    match EquivocationProof::decode_and_verify(proof_bytes, &config) {
        Ok(proof) => check_equivocation_proof(&proof, &config),
        Err(e) => {
            exercise_error(&e, e.kind());
            if let Some(verified) = verified {
                if verified.id() != other.id() {
                    panic!(
                        "two verified entries of revision {} of one product are no proof: {e}",
                        other.revision()
                    );
                }
            }
        }
    }
});
