//! The workspace patches `asynchronous-codec`, which libp2p frames noise and its protocols'
//! substreams with, so that its buffers allocate as they fill
//! (patches/asynchronous-codec/PATCHED.md). Cargo only warns when a patch stops applying, e.g.
//! after an upgrade that resolves another version: these tests fail instead.

use asynchronous_codec::{BytesCodec, Framed};

#[test]
fn framed_buffers_start_empty() {
    let parts = Framed::new(futures::io::Cursor::new(Vec::<u8>::new()), BytesCodec).into_parts();
    assert_eq!(parts.read_buffer.capacity(), 0);
    assert_eq!(parts.write_buffer.capacity(), 0);
}

#[test]
fn every_asynchronous_codec_in_the_lock_file_is_the_patched_one() {
    let lock = include_str!("../../Cargo.lock").replace("\r\n", "\n");
    // Tables of the lock file: `[[package]]`, and `[[patch.unused]]` for a patch that
    // resolved nothing.
    let tables: Vec<&str> = lock.split("\n[[").collect();
    let unused = tables.iter().any(|t| {
        t.starts_with("patch.unused]]") && t.contains("\nname = \"asynchronous-codec\"\n")
    });
    assert!(
        !unused,
        "the asynchronous-codec patch is unused: it no longer matches the version libp2p asks for"
    );
    let packages: Vec<&str> = tables
        .into_iter()
        .filter(|t| t.starts_with("package]]") && t.contains("\nname = \"asynchronous-codec\"\n"))
        .collect();
    assert_eq!(
        packages.len(),
        1,
        "asynchronous-codec resolved {} times: {packages:?}",
        packages.len()
    );
    // The patch is of 0.7.0; a path dependency has no `source` line, the published crate's
    // says crates.io.
    assert!(
        packages[0].contains("\nversion = \"0.7.0\"\n"),
        "{}",
        packages[0]
    );
    assert!(
        !packages[0].contains("\nsource = "),
        "asynchronous-codec is not the patched path crate: {}",
        packages[0]
    );
}
