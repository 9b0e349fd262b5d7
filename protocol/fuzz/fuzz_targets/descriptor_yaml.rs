//! `Descriptor::from_yaml` on arbitrary UTF-8 (other input is skipped).
//!
//! Properties of an accepted descriptor: every text is trimmed, within its limit and free of
//! control characters; counts are within the limits; names, tags, ports, inputs and allowed
//! peers are unique; SLOs are positive whole milliseconds up to 10 years; and the descriptor,
//! signed into a catalog entry, is accepted on the wire unchanged (a file one node accepts,
//! every node accepts). A refused file yields at least one error, each with a path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_protocol::Descriptor;
use mesh_protocol_fuzz::{check_descriptor_invariants, check_descriptor_on_the_wire, config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = config();
    match Descriptor::from_yaml(text, &config) {
        Ok(descriptor) => {
            check_descriptor_on_the_wire(&descriptor, &config);
            check_descriptor_invariants(&descriptor, &config);
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused with no error");
            for error in &errors.0 {
                assert!(!error.path.is_empty(), "error without a path: {error}");
            }
            let _ = errors.to_string();
        }
    }
});
