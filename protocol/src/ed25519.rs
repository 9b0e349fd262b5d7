//! Signature verification: one rule, whether a signature is checked alone or in a batch.
//!
//! RFC 8032 leaves implementations a choice between the cofactorless equation
//! `[s]B = R + [k]A` and the cofactored one `[8][s]B = [8]R + [8][k]A`, and libraries differ —
//! most, ed25519-dalek included, check one equation alone and a randomised cofactorless one in
//! batches. An owner can then sign an event (with `R` carrying a small-order component, or
//! encoded with y ≥ p) that one peer accepts in a batch and another rejects alone, or that one
//! batch accepts and the next rejects, depending on the random coefficients. A signed log that
//! peers batch-verify on ingest and verify one by one on audit cannot tolerate that, so the
//! protocol fixes the rule, the one Zcash specified as ZIP 215 (also used by
//! `ed25519-consensus`), plus a refusal of weak keys:
//!
//! - the key `A` and the signature's `R` are 32-byte encodings of curve points (a
//!   non-canonical `y ≥ p` is decoded, not refused);
//! - `A` is not of small order (such a key "signs" every message);
//! - `s` is canonical: `s < l`;
//! - `k = SHA-512(R ‖ A ‖ M) mod l`, over the 32-byte encodings as carried;
//! - the signature is valid iff `[8]([s]B − [k]A − R)` is the identity.
//!
//! A batch checks `[8](Σ zᵢ([sᵢ]B − [kᵢ]A − Rᵢ)) = 0` with 128-bit coefficients `zᵢ` that
//! blake3 derives from the whole batch. Because the equation is cofactored, small-order
//! components vanish in both checks alike, and a batch passes exactly when every signature in
//! it passes alone (but for a probability below 2⁻¹²⁰ that a batch with a bad signature
//! passes, which an attacker can only improve by brute force on blake3). Every signature
//! ed25519-dalek makes is valid under this rule.

use std::collections::HashMap;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::Signature;
use sha2::{Digest, Sha512};

use crate::error::IdError;

/// A public key decoded to a curve point that is not of small order: ready to verify with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VerifyingPoint {
    bytes: [u8; 32],
    /// `−A`, the form both equations use.
    minus_a: EdwardsPoint,
}

impl VerifyingPoint {
    pub fn decode(bytes: &[u8; 32]) -> Result<Self, IdError> {
        let a = CompressedEdwardsY(*bytes)
            .decompress()
            .ok_or(IdError::KeyNotOnCurve)?;
        if a.is_small_order() {
            return Err(IdError::WeakKey);
        }
        Ok(Self {
            bytes: *bytes,
            minus_a: -a,
        })
    }
}

/// The parts of a signature the equations need, or `None` if `R` is not a curve point or `s`
/// is not canonical.
struct Parts {
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

fn parts(key: &VerifyingPoint, message: &[u8], signature: &Signature) -> Option<Parts> {
    let r_bytes = signature.r_bytes();
    let r = CompressedEdwardsY(*r_bytes).decompress()?;
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(*signature.s_bytes()))?;
    let k = Scalar::from_hash(
        Sha512::new()
            .chain_update(r_bytes)
            .chain_update(key.bytes)
            .chain_update(message),
    );
    Some(Parts { r, s, k })
}

/// Checks one signature.
pub(crate) fn verify(key: &VerifyingPoint, message: &[u8], signature: &Signature) -> bool {
    let Some(Parts { r, s, k }) = parts(key, message, signature) else {
        return false;
    };
    // [k](−A) + [s]B − R
    let difference = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &key.minus_a, &s) - r;
    difference.mul_by_cofactor().is_identity()
}

/// Checks many signatures at once: `true` iff every one of them is valid (see the module
/// documentation for the probability bound). Terms of one key are merged, so a batch from one
/// log costs one point per signature plus one. A batch of one is checked alone: the same
/// equation without the coefficient, and with the basepoint's precomputed table, so about a
/// sixth cheaper than the batch equation on one signature (BENCHMARKS.md,
/// `catalog/decode_verify_batch1`).
pub(crate) fn verify_batch(items: &[(&VerifyingPoint, &[u8], &Signature)]) -> bool {
    match items {
        [] => return true,
        [(key, message, signature)] => return verify(key, message, signature),
        _ => {}
    }
    let mut all = Vec::with_capacity(items.len());
    for (key, message, signature) in items {
        match parts(key, message, signature) {
            Some(p) => all.push(p),
            None => return false,
        }
    }
    let coefficients = coefficients(items, &all);

    let mut b_coefficient = Scalar::ZERO;
    let mut scalars = Vec::with_capacity(items.len() * 2 + 1);
    let mut points = Vec::with_capacity(items.len() * 2 + 1);
    // Key bytes -> (index of its term, so far Σ zᵢkᵢ).
    let mut key_terms: HashMap<[u8; 32], (usize, Scalar)> = HashMap::new();
    let mut key_points = Vec::new();
    for (((key, _, _), p), z) in items.iter().zip(&all).zip(&coefficients) {
        b_coefficient += z * p.s;
        scalars.push(-z);
        points.push(p.r);
        let term = key_terms.entry(key.bytes).or_insert_with(|| {
            key_points.push(key.minus_a);
            (key_points.len() - 1, Scalar::ZERO)
        });
        term.1 += z * p.k;
    }
    let mut key_scalars = vec![Scalar::ZERO; key_points.len()];
    for (index, sum) in key_terms.into_values() {
        key_scalars[index] = sum;
    }
    scalars.push(b_coefficient);
    points.push(ED25519_BASEPOINT_POINT);
    scalars.extend(key_scalars);
    points.extend(key_points);
    EdwardsPoint::vartime_multiscalar_mul(&scalars, &points)
        .mul_by_cofactor()
        .is_identity()
}

/// The batch's 128-bit coefficients, derived from everything in it, so no signer can choose
/// signatures that cancel out.
fn coefficients(items: &[(&VerifyingPoint, &[u8], &Signature)], all: &[Parts]) -> Vec<Scalar> {
    let mut transcript = blake3::Hasher::new_derive_key("mesh/v1 ed25519 batch coefficients");
    transcript.update(&(items.len() as u64).to_le_bytes());
    for ((key, _, signature), p) in items.iter().zip(all) {
        transcript.update(&key.bytes);
        transcript.update(&signature.to_bytes());
        transcript.update(p.k.as_bytes());
    }
    let mut output = transcript.finalize_xof();
    (0..items.len())
        .map(|_| {
            let mut z = [0u8; 16];
            output.fill(&mut z);
            // A zero coefficient would drop its signature from the check.
            Scalar::from(u128::from_le_bytes(z).max(1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use curve25519_dalek::constants::EIGHT_TORSION;
    use ed25519_dalek::{Signer, SigningKey, Verifier};

    use super::*;

    fn point(key: &SigningKey) -> VerifyingPoint {
        VerifyingPoint::decode(&key.verifying_key().to_bytes()).unwrap()
    }

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn rfc8032_test_vectors_verify() {
        // RFC 8032 §7.1, tests 1 and 2.
        let vectors = [
            (
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ];
        for (key, message, signature) in vectors {
            let key = VerifyingPoint::decode(&unhex(key)).unwrap();
            let message = hex::decode(message).unwrap();
            let signature = Signature::from_bytes(&unhex(signature));
            assert!(verify(&key, &message, &signature));
            assert!(verify_batch(&[(&key, &message, &signature)]));
            // With a companion, so that the batch equation sees it too.
            let (companion, companion_signature) = companion();
            assert!(verify_batch(&[
                (&key, &message, &signature),
                (&companion, b"companion", &companion_signature),
            ]));
            let mut other = message.clone();
            other.push(0);
            assert!(!verify(&key, &other, &signature));
            assert!(!verify_batch(&[
                (&key, &other, &signature),
                (&companion, b"companion", &companion_signature),
            ]));
        }
    }

    /// A good signature of b"companion", to put a signature under test into a batch of two.
    fn companion() -> (VerifyingPoint, Signature) {
        let key = SigningKey::from_bytes(&[42; 32]);
        (point(&key), key.sign(b"companion"))
    }

    #[test]
    fn agrees_with_dalek_on_ordinary_signatures() {
        let keys: Vec<SigningKey> = (1..=4u8)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect();
        let messages: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; i as usize * 7]).collect();
        let signed: Vec<_> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let key = &keys[i % keys.len()];
                (point(key), m.as_slice(), key.sign(m), key.verifying_key())
            })
            .collect();
        for (key, message, signature, dalek) in &signed {
            assert!(dalek.verify(message, signature).is_ok());
            assert!(verify(key, message, signature));
        }
        let items: Vec<_> = signed.iter().map(|(k, m, s, _)| (k, *m, s)).collect();
        assert!(verify_batch(&items));

        // One bad signature fails its batch, and fails alone.
        let mut bad = signed[5].2.to_bytes();
        bad[40] ^= 1;
        let bad = Signature::from_bytes(&bad);
        assert!(!verify(&signed[5].0, signed[5].1, &bad));
        let mut items = items;
        items[5].2 = &bad;
        assert!(!verify_batch(&items));
        // A signature over another message, or by another key, fails.
        assert!(!verify(&signed[0].0, signed[1].1, &signed[0].2));
        assert!(!verify(&signed[1].0, signed[0].1, &signed[0].2));
    }

    #[test]
    fn non_canonical_s_is_refused() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let signature = key.sign(b"m");
        let mut bytes = signature.to_bytes();
        // s + l: the same value mod l, not canonical.
        let l = Scalar::ZERO - Scalar::ONE; // l − 1
        let s = Scalar::from_canonical_bytes(bytes[32..].try_into().unwrap()).unwrap();
        let mut wide = [0u8; 33];
        // Little-endian s + (l − 1) + 1, computed on bytes: s + l < 2^256 for any s < l.
        let (a, b) = (s.to_bytes(), l.to_bytes());
        let mut carry = 1u16;
        for i in 0..32 {
            let sum = a[i] as u16 + b[i] as u16 + carry;
            wide[i] = sum as u8;
            carry = sum >> 8;
        }
        wide[32] = carry as u8;
        assert_eq!(wide[32], 0);
        bytes[32..].copy_from_slice(&wide[..32]);
        let forged = Signature::from_bytes(&bytes);
        let vp = point(&key);
        assert!(!verify(&vp, b"m", &forged));
        assert!(!verify_batch(&[(&vp, b"m", &forged)]));
        let (companion, companion_signature) = companion();
        assert!(!verify_batch(&[
            (&vp, b"m", &forged),
            (&companion, b"companion", &companion_signature),
        ]));
    }

    /// A signature made by the owner with `R = [r]B + T`, `T` of small order: the cofactored
    /// rule accepts it alone and in any batch; before this rule, a batch accepted it only
    /// when the random coefficient happened to cancel `T`.
    #[test]
    fn torsion_in_r_is_judged_alike_alone_and_in_batches() {
        let a = Scalar::from(123_456_789u64);
        let key_point = EdwardsPoint::mul_base(&a);
        let key = VerifyingPoint::decode(&key_point.compress().to_bytes()).unwrap();
        let message = b"event".as_slice();
        let ordinary = SigningKey::from_bytes(&[7; 32]);
        let ordinary_signature = ordinary.sign(message);
        let ordinary_point = point(&ordinary);
        for torsion in EIGHT_TORSION.iter().skip(1) {
            let r = Scalar::from(987_654_321u64);
            let big_r = (EdwardsPoint::mul_base(&r) + torsion).compress();
            let k = Scalar::from_hash(
                Sha512::new()
                    .chain_update(big_r.as_bytes())
                    .chain_update(key.bytes)
                    .chain_update(message),
            );
            let s = r + k * a;
            let mut bytes = [0u8; 64];
            bytes[..32].copy_from_slice(big_r.as_bytes());
            bytes[32..].copy_from_slice(s.as_bytes());
            let signature = Signature::from_bytes(&bytes);
            assert!(verify(&key, message, &signature));
            for companions in 0..4 {
                let mut items = vec![(&key, message, &signature)];
                items.extend(
                    (0..companions).map(|_| (&ordinary_point, message, &ordinary_signature)),
                );
                assert!(
                    verify_batch(&items),
                    "torsion {torsion:?}, {companions} companions"
                );
            }
        }
    }

    proptest::proptest! {
        /// A batch passes exactly when every signature in it passes alone, for any mix of
        /// good signatures, flipped bits, and signatures by the wrong key or of the wrong
        /// message, from one or several keys.
        #[test]
        fn a_batch_agrees_with_its_signatures_alone(
            plan in proptest::collection::vec((0u8..3, 0u8..4, proptest::option::of(0usize..512)), 1..12)
        ) {
            let keys: Vec<SigningKey> = (1..=3u8).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
            let points: Vec<VerifyingPoint> = keys.iter().map(point).collect();
            let messages: Vec<Vec<u8>> = (0..plan.len()).map(|i| vec![i as u8; 40]).collect();
            let signatures: Vec<Signature> = plan
                .iter()
                .zip(&messages)
                .map(|((signer, _, flip), message)| {
                    let mut bytes = keys[*signer as usize].sign(message).to_bytes();
                    if let Some(bit) = flip {
                        bytes[bit / 8] ^= 1 << (bit % 8);
                    }
                    Signature::from_bytes(&bytes)
                })
                .collect();
            let items: Vec<(&VerifyingPoint, &[u8], &Signature)> = plan
                .iter()
                .zip(&messages)
                .zip(&signatures)
                .map(|(((signer, claimed, _), message), signature)| {
                    // Claimed by the signer (3), or by key `claimed`, which may be another.
                    let key = if *claimed == 3 { *signer } else { *claimed };
                    (&points[key as usize], message.as_slice(), signature)
                })
                .collect();
            let alone = items.iter().all(|(k, m, s)| verify(k, m, s));
            proptest::prop_assert_eq!(verify_batch(&items), alone);
        }
    }

    #[test]
    fn weak_and_off_curve_keys_are_refused() {
        for torsion in EIGHT_TORSION.iter() {
            assert_eq!(
                VerifyingPoint::decode(&torsion.compress().to_bytes()).err(),
                Some(IdError::WeakKey)
            );
        }
        // Some y-coordinates are not on the curve; find one.
        let off = (2u8..)
            .map(|y| {
                let mut bytes = [0u8; 32];
                bytes[0] = y;
                bytes
            })
            .find(|bytes| CompressedEdwardsY(*bytes).decompress().is_none())
            .unwrap();
        assert_eq!(
            VerifyingPoint::decode(&off).err(),
            Some(IdError::KeyNotOnCurve)
        );
    }
}
