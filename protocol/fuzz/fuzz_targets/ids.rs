//! `ProductId`, `PublicKey`, `EventId` (and `ProductName`) parsed from arbitrary UTF-8.
//!
//! Properties: whatever parses prints back to a string that parses to an equal value; and since
//! each string form is canonical, the printed string is the input itself (lower-cased for the
//! hex of an `EventId`). A parsed `PublicKey` is a usable, non-weak key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_protocol::{EventId, ProductId, ProductName, PublicKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    match text.parse::<ProductId>() {
        Ok(id) => {
            let printed = id.to_string();
            assert_eq!(
                printed.parse::<ProductId>().as_ref(),
                Ok(&id),
                "ProductId round trip"
            );
            assert_eq!(printed, text, "ProductId has a second string form");
            assert_eq!(
                format!("{}@{}", id.name(), id.owner()),
                text,
                "ProductId parts"
            );
            let _ = (id.short(), id.digest());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    match text.parse::<PublicKey>() {
        Ok(key) => {
            let printed = key.to_string();
            assert_eq!(
                printed.parse::<PublicKey>(),
                Ok(key),
                "PublicKey round trip"
            );
            assert_eq!(printed, text, "PublicKey has a second string form");
            assert_eq!(
                key.validate(),
                Ok(()),
                "parsed a key that does not validate"
            );
            assert_eq!(
                PublicKey::from_peer_id_bytes(&key.to_peer_id_bytes()),
                Ok(key),
                "PeerId bytes round trip"
            );
            let _ = key.short();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    match text.parse::<EventId>() {
        Ok(id) => {
            let printed = id.to_string();
            assert_eq!(printed.parse::<EventId>(), Ok(id), "EventId round trip");
            assert_eq!(printed, text.to_ascii_lowercase(), "EventId string form");
            assert_eq!(EventId::from_bytes(*id.as_bytes()), id);
            assert!(printed.starts_with(&id.short()));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    match text.parse::<ProductName>() {
        Ok(name) => {
            assert_eq!(name.as_str(), text, "ProductName changed its input");
            assert_eq!(name.to_string().parse::<ProductName>().as_ref(), Ok(&name));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
