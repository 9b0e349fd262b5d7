//! Every limit the protocol core enforces, in one place, with its default.
//!
//! Limits bound what a peer can make us allocate or store. They are checked while decoding,
//! before any signature work, so an oversized message costs a length comparison and nothing
//! more. All nodes of one mesh should run with the same limits: an event one node accepts and
//! another rejects as oversized cannot replicate to the second.

/// Limits on events, catalog entries and descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest encoded `SignedEvent` accepted from anywhere. Default 320 KiB: the largest payload
    /// plus its key, causes and framing.
    pub event_bytes_max: usize,
    /// Largest event payload. Default 256 KiB.
    pub payload_bytes_max: usize,
    /// Largest record key. Default 1 KiB. Keys must be non-empty.
    pub key_bytes_max: usize,
    /// Most upstream events one event may cite. Default 32.
    pub causes_max: usize,
    /// Largest encoded `SignedCatalogEntry`. Default 60 KiB, below gossipsub's 64 KiB default
    /// transmit size so that an entry always fits one gossip message.
    pub catalog_entry_bytes_max: usize,
    /// Most fields in a descriptor's schema. Default 256.
    pub fields_max: usize,
    /// Most tags on a descriptor. Default 32.
    pub tags_max: usize,
    /// Most declared inputs (upstream products) of a descriptor. Default 64.
    pub inputs_max: usize,
    /// Most products a catalog entry says its owner's node consumes for it (observed lineage).
    /// Default 256.
    pub consumes_max: usize,
    /// Most output ports of a descriptor. Default 16.
    pub output_ports_max: usize,
    /// Most peers on a restricted access policy's allow-list. Default 256.
    pub allowed_peers_max: usize,
    /// Longest short text: a tag, a field name or type, a domain, an owner, a port name.
    /// Default 128 bytes.
    pub short_text_bytes_max: usize,
    /// Longest descriptor or field description. Default 4 KiB.
    pub description_bytes_max: usize,
    /// Largest descriptor YAML file. Default 256 KiB.
    pub descriptor_file_bytes_max: usize,
    /// Largest frame of a node-to-node stream. Default 4 MiB.
    pub frame_bytes_max: usize,
    /// Most events in one frame of a log stream. Default 1024.
    pub frame_events_max: usize,
    /// Most catalog versions in one bucket request. Default 16384 (a 4 M-product catalog at
    /// 256 buckets).
    pub bucket_versions_max: usize,
    /// Most entries a node keeps in its catalog; new products beyond it are refused (updates of
    /// known ones are not). Default 1,000,000. Product ids are free to mint, so this bounds what
    /// a hostile peer can make a node store.
    pub catalog_entries_max: usize,
    /// Most products one owner key may have in a node's catalog. Default 10,000.
    pub products_per_owner_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            event_bytes_max: 320 * 1024,
            payload_bytes_max: 256 * 1024,
            key_bytes_max: 1024,
            causes_max: 32,
            catalog_entry_bytes_max: 60 * 1024,
            fields_max: 256,
            tags_max: 32,
            inputs_max: 64,
            consumes_max: 256,
            output_ports_max: 16,
            allowed_peers_max: 256,
            short_text_bytes_max: 128,
            description_bytes_max: 4 * 1024,
            descriptor_file_bytes_max: 256 * 1024,
            frame_bytes_max: 4 * 1024 * 1024,
            frame_events_max: 1024,
            bucket_versions_max: 16 * 1024,
            catalog_entries_max: 1_000_000,
            products_per_owner_max: 10_000,
        }
    }
}

/// Upper bound of the protobuf framing around an event's key, payload and causes: the product
/// id, seq, prev, timestamp, op, signer and signature, with their tags and lengths.
const EVENT_FRAMING_BYTES_MAX: usize = 512;
/// Upper bound of one encoded `EventRef` (product id with a 64-byte name, seq, 32-byte id).
const EVENT_REF_BYTES_MAX: usize = 160;

impl Config {
    /// Checks that the limits are consistent with each other: that the largest event a producer
    /// may create (largest key, payload and causes) fits `event_bytes_max`.
    pub fn validate(&self) -> Result<(), String> {
        let largest_event = self.payload_bytes_max
            + self.key_bytes_max
            + self.causes_max * EVENT_REF_BYTES_MAX
            + EVENT_FRAMING_BYTES_MAX;
        if largest_event > self.event_bytes_max {
            return Err(format!(
                "event_bytes_max ({}) is smaller than the largest valid event ({largest_event} bytes: \
                 payload_bytes_max + key_bytes_max + causes_max * {EVENT_REF_BYTES_MAX} + {EVENT_FRAMING_BYTES_MAX})",
                self.event_bytes_max
            ));
        }
        if self.frame_bytes_max < self.event_bytes_max + 64 {
            return Err("frame_bytes_max must hold at least one event".into());
        }
        if self.key_bytes_max == 0 {
            return Err("key_bytes_max must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_consistent() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn payload_larger_than_event_is_rejected() {
        let config = Config {
            payload_bytes_max: 1024 * 1024,
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert!(err.contains("event_bytes_max"), "{err}");
    }
}
