//! Catalog entries: signing, decoding, and the merge rule that makes catalogs converge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{ORDERS_YAML, T0_MICROS, descriptor, entry, key, product};
use mesh_protocol::wire::pb;
use mesh_protocol::{
    BuildError, CatalogEntry, Config, EquivocationProof, Merge, ProofError, SignedCatalogEntry,
    VerifiedCatalogEntry, VerifyError, merge,
};
use prost::Message;

fn receive(bytes: Bytes) -> Result<VerifiedCatalogEntry, mesh_protocol::RejectReason> {
    VerifiedCatalogEntry::decode_and_verify(bytes, &Config::default())
}

#[test]
fn a_signed_entry_decodes_to_the_same_entry() {
    let owner = key(1);
    let sent = entry(&owner, 1, "v1");
    let got = receive(sent.encoded().clone()).unwrap();
    assert_eq!(got, sent);
    assert_eq!(got.entry().descriptor, sent.entry().descriptor);
    assert!(got.entry().descriptor.has_pii());
}

#[test]
fn higher_revision_wins_and_lower_is_stale() {
    let owner = key(1);
    let (r1, r2) = (entry(&owner, 1, "v1"), entry(&owner, 2, "v2"));
    assert_eq!(merge(None, &r1), Merge::New);
    assert_eq!(
        merge(Some(&r1), &r2),
        Merge::Newer {
            replaced_revision: 1
        }
    );
    assert_eq!(
        merge(Some(&r2), &r1),
        Merge::Stale {
            current_revision: 2
        }
    );
    assert_eq!(merge(Some(&r2), &r2.clone()), Merge::Duplicate);
}

#[test]
fn merge_order_does_not_change_the_outcome() {
    let owner = key(1);
    let entries: Vec<_> = (1..=4)
        .map(|r| entry(&owner, r, &format!("v{r}")))
        .collect();
    // Apply every permutation of arrival order; the winner is always revision 4.
    let orders = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]];
    for order in orders {
        let mut held: Option<VerifiedCatalogEntry> = None;
        for &i in &order {
            match merge(held.as_ref(), &entries[i]) {
                Merge::New | Merge::Newer { .. } => held = Some(entries[i].clone()),
                Merge::Stale { .. } | Merge::Duplicate => {}
                Merge::Equivocation { proof, .. } => panic!("unexpected equivocation {proof:?}"),
            }
        }
        assert_eq!(held.unwrap().revision(), 4, "order {order:?}");
    }
}

#[test]
fn equal_revision_with_different_content_is_an_equivocation_proof() {
    let owner = key(1);
    let (a, b) = (
        entry(&owner, 3, "one story"),
        entry(&owner, 3, "another story"),
    );
    let Merge::Equivocation {
        proof,
        keep_incoming,
    } = merge(Some(&a), &b)
    else {
        panic!("expected an equivocation");
    };
    assert_eq!(keep_incoming, b.id() < a.id(), "the smaller id wins");
    assert_eq!(
        (proof.product(), proof.revision()),
        (&product(&owner, "orders"), 3)
    );
    let checked = EquivocationProof::decode_and_verify(proof.encode(), &Config::default()).unwrap();
    assert_eq!(&checked, proof.as_ref());

    // Tampering with either side breaks the proof.
    let mut pb_proof = pb::EquivocationProof::decode(proof.encode()).unwrap();
    let mut sig = pb_proof.first.as_ref().unwrap().signature.to_vec();
    sig[63] ^= 1;
    pb_proof.first.as_mut().unwrap().signature = Bytes::from(sig);
    assert_eq!(
        EquivocationProof::decode_and_verify(
            Bytes::from(pb_proof.encode_to_vec()),
            &Config::default()
        ),
        Err(ProofError::Verify(VerifyError::BadSignature))
    );
    // And two revisions are no equivocation.
    assert!(matches!(
        EquivocationProof::new(a, entry(&owner, 4, "later")),
        Err(ProofError::DifferentPositions {
            first: 3,
            second: 4
        })
    ));
}

#[test]
fn catalogs_converge_even_when_the_owner_equivocates() {
    let owner = key(1);
    // Two entries at revision 2 with different content, plus revisions 1 and 3.
    let entries = [
        entry(&owner, 1, "v1"),
        entry(&owner, 2, "one story"),
        entry(&owner, 2, "another story"),
        entry(&owner, 3, "v3"),
    ];
    let apply = |order: &[usize], upto_revision: u64| {
        let mut held: Option<VerifiedCatalogEntry> = None;
        let mut proofs = 0;
        for &i in order {
            if entries[i].revision() > upto_revision {
                continue;
            }
            match merge(held.as_ref(), &entries[i]) {
                Merge::New | Merge::Newer { .. } => held = Some(entries[i].clone()),
                Merge::Equivocation { keep_incoming, .. } => {
                    proofs += 1;
                    if keep_incoming {
                        held = Some(entries[i].clone());
                    }
                }
                Merge::Stale { .. } | Merge::Duplicate => {}
            }
        }
        (held.unwrap().id(), proofs)
    };
    // Without revision 3, every order settles on the same revision-2 entry and sees the proof.
    let orders: [[usize; 4]; 4] = [[0, 1, 2, 3], [0, 2, 1, 3], [2, 1, 0, 3], [1, 0, 2, 3]];
    let results: Vec<_> = orders.iter().map(|o| apply(o, 2)).collect();
    let smaller = entries[1].id().min(entries[2].id());
    assert!(
        results
            .iter()
            .all(|(id, proofs)| *id == smaller && *proofs == 1),
        "{results:?}"
    );
    // With revision 3, everyone holds revision 3 whatever the order.
    assert!(orders.iter().all(|o| apply(o, 3).0 == entries[3].id()));
}

#[test]
fn only_the_owner_can_sign_an_entry() {
    let owner = key(1);
    let mallory = key(2);
    let err = CatalogEntry {
        product: product(&owner, "orders"),
        revision: 1,
        timestamp_micros: T0_MICROS,
        descriptor: descriptor(ORDERS_YAML),
        consumes: Vec::new(),
    }
    .sign(&mallory, &Config::default())
    .unwrap_err();
    assert!(matches!(err, BuildError::NotOwner { .. }));

    // A hand-made envelope naming Mallory as signer is refused on receipt.
    let genuine = entry(&owner, 1, "v1");
    let mut envelope = pb::SignedCatalogEntry::decode(genuine.encoded().clone()).unwrap();
    envelope.signer = Bytes::copy_from_slice(mallory.public().as_bytes());
    let err = receive(Bytes::from(envelope.encode_to_vec())).unwrap_err();
    assert_eq!(err.kind(), "wrong_author");
}

#[test]
fn descriptor_name_must_match_the_product_and_not_be_its_own_input() {
    let owner = key(1);
    let mismatched = CatalogEntry {
        product: product(&owner, "invoices"),
        revision: 1,
        timestamp_micros: T0_MICROS,
        descriptor: descriptor(ORDERS_YAML),
        consumes: Vec::new(),
    }
    .sign(&owner, &Config::default())
    .unwrap_err();
    assert!(
        mismatched.to_string().contains("descriptor.name"),
        "{mismatched}"
    );

    let mut d = descriptor(ORDERS_YAML);
    d.inputs.push(product(&owner, "orders"));
    let cyclic = CatalogEntry {
        product: product(&owner, "orders"),
        revision: 1,
        timestamp_micros: T0_MICROS,
        descriptor: d,
        consumes: Vec::new(),
    }
    .sign(&owner, &Config::default())
    .unwrap_err();
    assert!(cyclic.to_string().contains("own input"), "{cyclic}");
}

#[test]
fn wire_descriptors_get_the_same_checks_as_files() {
    let owner = key(1);
    let genuine = entry(&owner, 1, "v1");
    let mut envelope = pb::SignedCatalogEntry::decode(genuine.encoded().clone()).unwrap();
    let mut body = pb::CatalogEntryBody::decode(envelope.body.clone()).unwrap();
    let d = body.descriptor.as_mut().unwrap();
    d.version = "one".into();
    d.schema.as_mut().unwrap().fields[1].name = "order_id".into();
    envelope.body = Bytes::from(body.encode_to_vec());
    // Rejected on decode, before the (now broken) signature is looked at, naming both problems.
    let err = SignedCatalogEntry::decode(Bytes::from(envelope.encode_to_vec()), &Config::default())
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("version") && text.contains("duplicate field name"),
        "{text}"
    );
    assert_eq!(err.kind(), "malformed");
}

#[test]
fn oversized_entries_are_refused() {
    let owner = key(1);
    let config = Config::default();
    let mut d = descriptor(ORDERS_YAML);
    // 20 fields with the longest description each: 80 KiB, over the 60 KiB entry limit.
    for i in 0..20 {
        d.fields.push(mesh_protocol::Field {
            name: format!("field_{i}"),
            field_type: mesh_protocol::FieldType::String,
            pii: false,
            nullable: false,
            description: "y".repeat(config.description_bytes_max),
        });
    }
    let err = CatalogEntry {
        product: product(&owner, "orders"),
        revision: 1,
        timestamp_micros: T0_MICROS,
        descriptor: d,
        consumes: Vec::new(),
    }
    .sign(&owner, &config)
    .unwrap_err();
    assert!(err.to_string().contains("catalog entry"), "{err}");
    let huge = Bytes::from(vec![0u8; config.catalog_entry_bytes_max + 1]);
    assert_eq!(receive(huge).unwrap_err().kind(), "oversized");
}

#[test]
fn an_equivocation_proof_side_over_the_entry_limit_is_refused() {
    let config = Config::default();
    let owner = key(1);
    let honest = entry(&owner, 1, "first");
    // A second revision-1 entry whose body is within `catalog_entry_bytes_max` but whose
    // envelope is not: refused alone, so it must be refused inside a proof too.
    let mut body = pb::SignedCatalogEntry::decode(honest.encoded().clone())
        .unwrap()
        .body
        .to_vec();
    body.extend(common::unknown_field(
        config.catalog_entry_bytes_max - body.len() - 8,
    ));
    let padded = common::sign_raw(&owner, mesh_protocol::CATALOG_SIGNING_CONTEXT, body);
    assert!(padded.len() > config.catalog_entry_bytes_max);
    assert_eq!(
        receive(Bytes::from(padded.clone())).unwrap_err().kind(),
        "oversized"
    );

    let proof = pb::EquivocationProof {
        first: Some(pb::SignedCatalogEntry::decode(honest.encoded().clone()).unwrap()),
        second: Some(pb::SignedCatalogEntry::decode(&padded[..]).unwrap()),
    };
    let err = EquivocationProof::decode_and_verify(Bytes::from(proof.encode_to_vec()), &config)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProofError::Decode(mesh_protocol::DecodeError::Oversized {
                what: "catalog entry",
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn observed_consumption_travels_signed_and_is_checked() {
    let config = Config::default();
    let owner = key(1);
    let upstream = [product(&key(2), "payments"), product(&key(3), "shipments")];
    let mut sorted = upstream.to_vec();
    sorted.sort();
    let make = |consumes: Vec<mesh_protocol::ProductId>| CatalogEntry {
        product: product(&owner, "orders"),
        revision: 1,
        timestamp_micros: T0_MICROS,
        descriptor: descriptor(ORDERS_YAML),
        consumes,
    };
    let signed = make(sorted.clone()).sign(&owner, &config).unwrap();
    let received = receive(signed.encoded().clone()).unwrap();
    assert_eq!(received.entry().consumes, sorted);

    // Unsorted or duplicated lists have two encodings of one set: refused.
    let mut unsorted = sorted.clone();
    unsorted.reverse();
    let err = make(unsorted).sign(&owner, &config).unwrap_err();
    assert!(err.to_string().contains("consumes"), "{err}");
    let err = make(vec![sorted[0].clone(), sorted[0].clone()])
        .sign(&owner, &config)
        .unwrap_err();
    assert!(err.to_string().contains("sorted"), "{err}");
    let err = make(vec![product(&owner, "orders")])
        .sign(&owner, &config)
        .unwrap_err();
    assert!(err.to_string().contains("consume itself"), "{err}");
}

#[test]
fn batch_verification_of_entries_finds_exactly_the_bad_ones() {
    let config = Config::default();
    // Entries of many owners, as a gossip or sync batch carries them.
    let entries: Vec<_> = (1..=20u8)
        .map(|seed| entry(&key(seed), 1, &format!("entry {seed}")))
        .collect();
    let mut bytes: Vec<Bytes> = entries.iter().map(|e| e.encoded().clone()).collect();
    // A flipped signature bit, and an entry signed by someone other than its product's owner.
    let mut flipped = pb::SignedCatalogEntry::decode(bytes[3].clone()).unwrap();
    let mut sig = flipped.signature.to_vec();
    sig[10] ^= 1;
    flipped.signature = Bytes::from(sig);
    bytes[3] = Bytes::from(flipped.encode_to_vec());
    let mut stolen = pb::SignedCatalogEntry::decode(bytes[11].clone()).unwrap();
    stolen.signer = Bytes::copy_from_slice(key(99).public().as_bytes());
    bytes[11] = Bytes::from(stolen.encode_to_vec());

    let decoded = bytes
        .into_iter()
        .map(|b| SignedCatalogEntry::decode(b, &config).unwrap())
        .collect();
    let results = SignedCatalogEntry::verify_batch(decoded);
    assert_eq!(results.len(), entries.len());
    for (i, result) in results.iter().enumerate() {
        match i {
            3 => assert_eq!(result, &Err(VerifyError::BadSignature)),
            11 => assert!(matches!(result, Err(VerifyError::WrongAuthor { .. }))),
            _ => assert_eq!(result.as_ref().unwrap(), &entries[i], "entry {i}"),
        }
    }
    let good = entries
        .iter()
        .map(|e| SignedCatalogEntry::decode(e.encoded().clone(), &config).unwrap())
        .collect();
    assert!(
        SignedCatalogEntry::verify_batch(good)
            .iter()
            .all(Result::is_ok)
    );
}

#[test]
fn equal_catalogs_answer_a_digest_request_with_no_buckets() {
    use mesh_protocol::sync::{CatalogDigest, CatalogSummary, CatalogSyncRequest};
    let config = Config::default();
    let (a, b) = (entry(&key(1), 1, "a"), entry(&key(2), 1, "b"));
    let mut asker = CatalogSummary::new();
    let mut server = CatalogSummary::new();
    for e in [&a, &b] {
        asker.insert(e);
        server.insert(e);
    }
    // The request carries the root over the wire; equal roots get the empty answer.
    let request = CatalogSyncRequest::Digest {
        root: Some(asker.root()),
    };
    let decoded = CatalogSyncRequest::decode(request.encode(), &config).unwrap();
    assert_eq!(decoded, request);
    let CatalogSyncRequest::Digest { root } = decoded else {
        unreachable!()
    };
    let answer = CatalogDigest::decode(server.digest_for(root.as_ref()).encode(), &config).unwrap();
    assert!(answer.is_same());
    assert!(asker.differing_buckets(&answer).is_empty());

    // One newer entry on the server: the roots differ, the full digest names its bucket.
    let newer = entry(&key(2), 2, "b again");
    server.insert(&newer);
    let answer = CatalogDigest::decode(server.digest_for(root.as_ref()).encode(), &config).unwrap();
    assert!(!answer.is_same());
    assert_eq!(asker.differing_buckets(&answer).len(), 1);
    // No root (an older asker): always the full digest.
    assert_eq!(server.digest_for(None), server.digest());

    // A root must be 32 bytes.
    let bad = pb::CatalogSyncRequest {
        request: Some(pb::catalog_sync_request::Request::Digest(
            pb::DigestRequest {
                root: Bytes::from_static(b"short"),
            },
        )),
    };
    assert!(CatalogSyncRequest::decode(Bytes::from(bad.encode_to_vec()), &config).is_err());
}
