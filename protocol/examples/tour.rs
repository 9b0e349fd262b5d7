//! A tour of the protocol core: two domains, a catalog entry, a signed change log, and what a
//! receiver does with forged, reordered and forked events.
//!
//! Run: `cargo run -p mesh-protocol --example tour`
#![allow(clippy::expect_used)]

use bytes::Bytes;
use mesh_protocol::{
    CatalogEntry, Config, Descriptor, ForkProof, LogHead, Merge, Operation, ProductId, ProductName,
    RejectReason, SecretKey, SignedEvent, VerifiedCatalogEntry, VerifiedEvent, merge,
};

const NOW_MICROS: u64 = 1_763_700_000_000_000;

fn main() {
    let config = Config::default();
    // Fixed seeds keep the tour reproducible; a node draws its key from the OS.
    let sales = SecretKey::from_bytes(&[1; 32]);
    let analytics = SecretKey::from_bytes(&[2; 32]);
    println!("== Identities");
    println!("sales node      {}", sales.public());
    println!("analytics node  {}", analytics.public());

    let orders = ProductId::new(
        sales.public(),
        ProductName::new("orders").expect("valid name"),
    );
    println!("\n== A self-certifying product id\n{orders}");

    let yaml = String::from(
        "name: orders\ndomain: sales\nowner: sales-data@example.com\n\
         description: Every order placed in the web shop.\ntags: [orders, revenue]\n\
         version: 1.0.0\nschema:\n  fields:\n    - name: order_id\n      type: string\n\
         \x20   - name: email\n      type: string\n      pii: true\n",
    );
    let descriptor = Descriptor::from_yaml(&yaml, &config).expect("valid descriptor");
    let entry = CatalogEntry {
        product: orders.clone(),
        revision: 1,
        timestamp_micros: NOW_MICROS,
        descriptor,
        consumes: Vec::new(),
    }
    .sign(&sales, &config)
    .expect("sales owns orders");
    println!(
        "\n== Catalog entry, signed by sales ({} bytes)",
        entry.encoded().len()
    );
    let received = VerifiedCatalogEntry::decode_and_verify(entry.encoded().clone(), &config)
        .expect("entry verifies");
    println!(
        "analytics receives it: merge -> {:?}",
        merge(None, &received)
    );
    let typo = Descriptor::from_yaml(&yaml.replace("version: 1.0.0", "version: 1.0"), &config)
        .expect_err("not semver");
    println!("a descriptor with a typo is refused: {typo}");

    println!("\n== A change log of three events");
    let mut head = LogHead::empty(orders.clone());
    let mut log: Vec<VerifiedEvent> = Vec::new();
    for (i, (key, payload)) in [
        ("o-1", "{\"total\":12}"),
        ("o-2", "{\"total\":30}"),
        ("o-1", "{\"total\":15}"),
    ]
    .into_iter()
    .enumerate()
    {
        let event = head
            .next_event(
                NOW_MICROS + i as u64,
                Operation::Upsert,
                Bytes::from(key),
                Bytes::from(payload),
                vec![],
            )
            .sign(&sales, &config)
            .expect("valid event");
        head.advance(&event).expect("extends the log");
        println!("seq {} key {key} id {}", event.seq(), event.id().short());
        log.push(event);
    }

    println!("\n== What a subscriber accepts and refuses");
    let ingest = |head: &mut LogHead, bytes: Bytes| -> Result<(), RejectReason> {
        let event = SignedEvent::decode(bytes, &config)?.verify()?;
        head.advance(&event)?;
        Ok(())
    };
    let mut replica = LogHead::empty(orders.clone());
    let report = |what: &str, result: Result<(), RejectReason>| match result {
        Ok(()) => println!("{what:<28} accepted"),
        Err(e) => println!("{what:<28} rejected [{}]: {e}", e.kind()),
    };
    report("seq 1", ingest(&mut replica, log[0].encoded().clone()));
    report(
        "seq 3 before seq 2",
        ingest(&mut replica, log[2].encoded().clone()),
    );
    // A peer relaying seq 2 changes the order total from 30 to 99.
    let mut forged = log[1].encoded().to_vec();
    let at = forged
        .windows(2)
        .position(|w| w == b"30")
        .expect("the payload is in the envelope");
    forged[at..at + 2].copy_from_slice(b"99");
    report(
        "seq 2, total changed to 99",
        ingest(&mut replica, Bytes::from(forged)),
    );
    report("seq 2", ingest(&mut replica, log[1].encoded().clone()));
    report(
        "seq 1 again",
        ingest(&mut replica, log[0].encoded().clone()),
    );
    report("seq 3", ingest(&mut replica, log[2].encoded().clone()));

    println!("\n== A fork: sales signs a second event at seq 3");
    let other = LogHead::at(&log[1])
        .next_event(
            NOW_MICROS,
            Operation::Delete,
            Bytes::from("o-1"),
            Bytes::new(),
            vec![],
        )
        .sign(&sales, &config)
        .expect("valid event");
    let proof = ForkProof::new(log[2].clone(), other).expect("a fork");
    let bytes = proof.encode();
    let checked = ForkProof::decode_and_verify(bytes.clone(), &config).expect("proof verifies");
    println!(
        "fork proof for {} seq {}: {} bytes, verifies on its own",
        checked.product().short(),
        checked.seq(),
        bytes.len()
    );

    println!("\n== Catalog merge: a newer revision wins");
    let mut updated = entry.entry().clone();
    updated.revision = 2;
    updated.descriptor.description = "Every order placed in the web shop or the app.".into();
    let updated = updated.sign(&sales, &config).expect("valid entry");
    match merge(Some(&received), &updated) {
        Merge::Newer { replaced_revision } => {
            println!("revision 2 replaces revision {replaced_revision}")
        }
        other => println!("unexpected: {other:?}"),
    }
    println!(
        "\nanalytics ({}) could now subscribe to {}",
        analytics.public().short(),
        orders.short()
    );
}
