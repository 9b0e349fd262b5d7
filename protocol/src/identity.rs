//! Keys and self-certifying data product ids.
//!
//! A node's identity is an ed25519 key pair, the same one libp2p uses for its `PeerId`. A data
//! product is named by its owner's public key and a product name, so the id itself says whose
//! signature every entry and event of the product must carry: no registry is needed to decide
//! who may publish for a product, and no one but the owner can.
//!
//! String forms:
//! - a public key prints as its libp2p `PeerId` (`12D3KooW...`, base58btc of the identity
//!   multihash of the protobuf-encoded key), so operators see one name for a node everywhere;
//! - a product id prints as `name@PeerId`, e.g. `orders@12D3KooWD3eck...`; it round-trips
//!   through [`ProductId::from_str`].

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey};

use crate::ed25519::{self, VerifyingPoint};
use crate::error::IdError;

/// Length of an ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Length of an ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Longest product name.
pub const PRODUCT_NAME_BYTES_MAX: usize = 64;

/// The multihash and protobuf prefix of an ed25519 libp2p `PeerId`: identity multihash (0x00),
/// length 36 (0x24), then `PublicKey { Type = Ed25519 (0x08 0x01), Data = 32 bytes (0x12 0x20) }`.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// An ed25519 secret key. Its `Debug` form never shows the secret.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// The key for a 32-byte seed. The caller supplies the randomness (the core reads no entropy
    /// source), e.g. from the operating system when a node is initialised.
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, to store the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `context || digest`. Every signature in the protocol covers a context string and a
    /// blake3 digest, so a signature made for one kind of message can never be replayed as
    /// another kind.
    pub(crate) fn sign_digest(&self, context: &[u8], digest: &[u8; 32]) -> Signature {
        self.0.sign(&signing_message(context, digest))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public: {})", self.public().short())
    }
}

/// The message an ed25519 signature covers: a context string, then a 32-byte digest.
pub(crate) fn signing_message(context: &[u8], digest: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(context.len() + digest.len());
    message.extend_from_slice(context);
    message.extend_from_slice(digest);
    message
}

/// An ed25519 public key, as its 32-byte compressed encoding.
///
/// Decoding a message only checks the length: turning the bytes into a curve point costs as
/// much as a quarter of a signature check, and a log's events all carry the same key. The
/// point is decompressed, and weak (small-order) keys refused, when a signature is verified —
/// once per distinct key in a batch — and when a key is parsed from text a person typed.
/// A `PublicKey` that is not a valid point simply never verifies a signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; PUBLIC_KEY_BYTES]);

impl PublicKey {
    /// The key with these 32 bytes. Checks the length only; see [`PublicKey::validate`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        let array: [u8; PUBLIC_KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| IdError::KeyLength { len: bytes.len() })?;
        Ok(Self(array))
    }

    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_BYTES] {
        &self.0
    }

    /// Checks that the bytes are a point on the curve and not of small order.
    pub fn validate(self) -> Result<(), IdError> {
        self.to_verifying_key().map(|_| ())
    }

    /// The decompressed key, for signature checks.
    pub(crate) fn to_verifying_key(self) -> Result<VerifyingPoint, IdError> {
        VerifyingPoint::decode(&self.0)
    }

    /// The libp2p `PeerId` bytes (identity multihash) of this key.
    pub fn to_peer_id_bytes(self) -> [u8; 38] {
        let mut out = [0u8; 38];
        out[..PEER_ID_PREFIX.len()].copy_from_slice(&PEER_ID_PREFIX);
        out[PEER_ID_PREFIX.len()..].copy_from_slice(self.as_bytes());
        out
    }

    /// The key inside a libp2p ed25519 `PeerId`'s bytes.
    pub fn from_peer_id_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        match bytes.strip_prefix(&PEER_ID_PREFIX[..]) {
            Some(key) => Self::from_bytes(key),
            None => Err(IdError::NotEd25519PeerId),
        }
    }

    /// A short form for logs: the last 6 characters of the `PeerId`.
    pub fn short(&self) -> String {
        let full = self.to_string();
        format!("…{}", &full[full.len().saturating_sub(6)..])
    }
}

/// Verifies an ed25519 signature of `context || digest` by `key`.
///
/// The rule (cofactored, as ZIP 215) is in [`crate::ed25519`]; batches follow the same one, so
/// one event is judged alike whether it arrives alone or in a batch.
pub(crate) fn verify_digest(
    key: &VerifyingPoint,
    context: &[u8],
    digest: &[u8; 32],
    signature: &Signature,
) -> bool {
    ed25519::verify(key, &signing_message(context, digest), signature)
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.to_peer_id_bytes()).into_string())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A base58 PeerId of an ed25519 key is 52 characters; refuse long input before decoding.
        if s.len() > 64 {
            return Err(IdError::NotEd25519PeerId);
        }
        let bytes = bs58::decode(s).into_vec().map_err(|_| IdError::NotBase58)?;
        let key = Self::from_peer_id_bytes(&bytes)?;
        // Text comes from people: tell them now, not at the first signature, that it is no key.
        key.validate()?;
        Ok(key)
    }
}

/// A product name: 1 to 64 characters of `[a-z0-9._-]`, starting with a letter or digit.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProductName(String);

impl ProductName {
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        let valid_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
        let starts_well = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if name.is_empty()
            || name.len() > PRODUCT_NAME_BYTES_MAX
            || !starts_well
            || !name.chars().all(valid_char)
        {
            return Err(IdError::BadName { name });
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProductName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ProductName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The self-certifying id of a data product: owner key and name. Ordered by owner, then name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProductId {
    owner: PublicKey,
    name: ProductName,
}

impl ProductId {
    pub fn new(owner: PublicKey, name: ProductName) -> Self {
        Self { owner, name }
    }

    pub fn owner(&self) -> &PublicKey {
        &self.owner
    }

    pub fn name(&self) -> &ProductName {
        &self.name
    }

    /// A fixed-size 32-byte digest of the id, for use as a compact storage key:
    /// blake3 in key-derivation mode with context `"mesh/v1/product-id"` over
    /// `owner (32 bytes) || name`.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("mesh/v1/product-id");
        hasher.update(self.owner.as_bytes());
        hasher.update(self.name.as_str().as_bytes());
        *hasher.finalize().as_bytes()
    }

    /// A short form for logs: `name@…XXXXXX`.
    pub fn short(&self) -> String {
        format!("{}@{}", self.name, self.owner.short())
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.owner)
    }
}

impl fmt::Debug for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProductId({self})")
    }
}

impl FromStr for ProductId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, owner) = s.split_once('@').ok_or_else(|| IdError::BadProductId {
            input: truncate_for_error(s),
        })?;
        Ok(Self {
            owner: owner.parse()?,
            name: ProductName::new(name)?,
        })
    }
}

/// Serializes a type as its `Display` string and deserializes it with `FromStr`, so ids read
/// the same in JSON, YAML and logs.
macro_rules! serde_as_string {
    ($($ty:ty),+) => {$(
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}
pub(crate) use serde_as_string;

serde_as_string!(PublicKey, ProductName, ProductId);

impl FromStr for ProductName {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Keeps error messages bounded when the input that caused them is hostile.
pub(crate) fn truncate_for_error(s: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 80;
    if s.chars().count() <= SHOWN_CHARS_MAX {
        s.to_owned()
    } else {
        let head: String = s.chars().take(SHOWN_CHARS_MAX).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn public_key_prints_as_libp2p_peer_id() {
        let text = key(1).public().to_string();
        assert!(text.starts_with("12D3KooW"), "{text}");
        assert_eq!(text.parse::<PublicKey>().unwrap(), key(1).public());
    }

    #[test]
    fn product_id_round_trips_through_its_string_form() {
        let id = ProductId::new(
            key(2).public(),
            ProductName::new("orders.v2_eu-west").unwrap(),
        );
        let text = id.to_string();
        assert!(text.starts_with("orders.v2_eu-west@12D3KooW"), "{text}");
        assert_eq!(text.parse::<ProductId>().unwrap(), id);
    }

    #[test]
    fn bad_product_ids_are_rejected_with_the_reason() {
        let owner = key(3).public();
        assert!(matches!(
            "orders".parse::<ProductId>(),
            Err(IdError::BadProductId { .. })
        ));
        assert!(matches!(
            format!("Orders@{owner}").parse::<ProductId>(),
            Err(IdError::BadName { .. })
        ));
        assert!(matches!(
            format!("@{owner}").parse::<ProductId>(),
            Err(IdError::BadName { .. })
        ));
        assert!(matches!(
            "a@0OIl".parse::<ProductId>(),
            Err(IdError::NotBase58)
        ));
        // A valid base58 string that is not an ed25519 PeerId (a sha256 multihash).
        assert!(matches!(
            "a@QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG".parse::<ProductId>(),
            Err(IdError::NotEd25519PeerId)
        ));
        let long = "a".repeat(PRODUCT_NAME_BYTES_MAX + 1);
        assert!(matches!(
            format!("{long}@{owner}").parse::<ProductId>(),
            Err(IdError::BadName { .. })
        ));
    }

    #[test]
    fn weak_keys_are_rejected() {
        // The identity point (0, 1) is of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = PublicKey::from_bytes(&identity).unwrap();
        assert_eq!(weak.validate(), Err(IdError::WeakKey));
        assert_eq!(weak.to_string().parse::<PublicKey>(), Err(IdError::WeakKey));
        assert_eq!(
            PublicKey::from_bytes(&[0u8; 31]),
            Err(IdError::KeyLength { len: 31 })
        );
    }

    #[test]
    fn secret_key_debug_hides_the_secret() {
        let text = format!("{:?}", key(4));
        assert!(!text.contains(&hex::encode(key(4).to_bytes())));
    }

    #[test]
    fn product_digest_depends_on_owner_and_name() {
        let a = ProductId::new(key(5).public(), ProductName::new("a").unwrap());
        let b = ProductId::new(key(5).public(), ProductName::new("b").unwrap());
        let c = ProductId::new(key(6).public(), ProductName::new("a").unwrap());
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
    }
}
