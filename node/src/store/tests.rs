//! The same contract tests, run against every store.

use bytes::Bytes;
use mesh_protocol::{
    Config, ForkProof, LogHead, Operation, ProductId, ProductName, SecretKey, VerifiedEvent,
};

use super::{MemoryStore, SledStore, Store, StoreError};

fn owner() -> SecretKey {
    SecretKey::from_bytes(&[1; 32])
}

fn product(name: &str) -> ProductId {
    ProductId::new(owner().public(), ProductName::new(name).unwrap())
}

/// `ops` as (key, Some(value) | None for delete), signed as a log from seq 1.
fn events(product: &ProductId, ops: &[(&str, Option<&str>)]) -> Vec<VerifiedEvent> {
    let mut head = LogHead::empty(product.clone());
    ops.iter()
        .map(|(k, v)| {
            let (op, payload) = match v {
                Some(v) => (Operation::Upsert, Bytes::copy_from_slice(v.as_bytes())),
                None => (Operation::Delete, Bytes::new()),
            };
            let e = head
                .next_event(1, op, Bytes::copy_from_slice(k.as_bytes()), payload, vec![])
                .sign(&owner(), &Config::default())
                .unwrap();
            head.advance(&e).unwrap();
            e
        })
        .collect()
}

fn stores() -> Vec<(&'static str, Box<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    vec![
        (
            "memory",
            Box::new(MemoryStore::new()),
            tempfile::tempdir().unwrap(),
        ),
        (
            "sled",
            Box::new(SledStore::open(&dir.path().join("db")).unwrap()),
            dir,
        ),
    ]
}

#[test]
fn appended_runs_move_head_and_replica_together() {
    for (name, store, _dir) in stores() {
        let p = product("orders");
        let log = events(
            &p,
            &[
                ("a", Some("1")),
                ("b", Some("2")),
                ("a", Some("3")),
                ("b", None),
            ],
        );
        assert_eq!(store.log_head(&p).unwrap(), None, "{name}");
        store.log_append(&p, &log[..2]).unwrap();
        store.log_append(&p, &log[2..]).unwrap();
        let head = store.log_head(&p).unwrap().unwrap();
        assert_eq!((head.seq, head.id), (4, log[3].id()), "{name}");
        assert_eq!(
            store.replica_get(&p, b"a").unwrap().as_deref(),
            Some(&b"3"[..]),
            "{name}"
        );
        assert_eq!(
            store.replica_get(&p, b"b").unwrap(),
            None,
            "{name}: deleted"
        );
        let range = store.log_range(&p, 2, 2).unwrap();
        assert_eq!(
            range,
            vec![log[1].encoded().clone(), log[2].encoded().clone()],
            "{name}"
        );
        assert_eq!(
            store.log_range(&p, 5, 10).unwrap(),
            Vec::<Bytes>::new(),
            "{name}"
        );
        assert_eq!(store.logs().unwrap(), vec![(p.clone(), head)], "{name}");
    }
}

#[test]
fn a_run_that_does_not_extend_the_head_is_refused_and_changes_nothing() {
    for (name, store, _dir) in stores() {
        let p = product("orders");
        let log = events(&p, &[("a", Some("1")), ("a", Some("2")), ("a", Some("3"))]);
        store.log_append(&p, &log[..1]).unwrap();
        let err = store.log_append(&p, &log[2..]).unwrap_err();
        assert!(
            matches!(err, StoreError::NotContiguous { head: 1, got: 3 }),
            "{name}: {err}"
        );
        assert_eq!(store.log_head(&p).unwrap().unwrap().seq, 1, "{name}");
        assert_eq!(
            store.replica_get(&p, b"a").unwrap().as_deref(),
            Some(&b"1"[..]),
            "{name}"
        );
    }
}

#[test]
fn catalog_forks_subscriptions_and_identity() {
    for (name, store, _dir) in stores() {
        let (orders, invoices) = (product("orders"), product("invoices"));
        store.catalog_put(&orders, &Bytes::from("entry-1")).unwrap();
        store.catalog_put(&orders, &Bytes::from("entry-2")).unwrap();
        store
            .catalog_put(&invoices, &Bytes::from("entry-3"))
            .unwrap();
        assert_eq!(
            store.catalog_get(&orders).unwrap(),
            Some(Bytes::from("entry-2")),
            "{name}"
        );
        assert_eq!(store.catalog_all().unwrap().len(), 2, "{name}");

        let a = events(&orders, &[("a", Some("1"))]);
        let b = events(&orders, &[("a", Some("other"))]);
        let proof = ForkProof::new(a[0].clone(), b[0].clone()).unwrap();
        assert!(store.fork_put(&proof).unwrap(), "{name}");
        assert!(
            !store.fork_put(&proof).unwrap(),
            "{name}: second time is not new"
        );
        assert_eq!(
            store.forks(Some(&orders)).unwrap(),
            vec![proof.encode()],
            "{name}"
        );
        assert_eq!(store.forks(Some(&invoices)).unwrap().len(), 0, "{name}");

        store.subscription_put(&orders).unwrap();
        store.subscription_put(&invoices).unwrap();
        store.subscription_remove(&invoices).unwrap();
        assert_eq!(
            store.subscriptions().unwrap(),
            vec![orders.clone()],
            "{name}"
        );

        assert_eq!(store.identity().unwrap(), None, "{name}");
        store.set_identity(&[9; 32]).unwrap();
        assert_eq!(store.identity().unwrap(), Some([9; 32]), "{name}");
    }
}

#[test]
fn sled_state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let p = product("orders");
    let log = events(&p, &[("a", Some("1")), ("b", Some("2"))]);
    {
        let store = SledStore::open(&path).unwrap();
        store.log_append(&p, &log).unwrap();
        store.subscription_put(&p).unwrap();
    }
    let store = SledStore::open(&path).unwrap();
    assert_eq!(store.log_head(&p).unwrap().unwrap().seq, 2);
    assert_eq!(
        store.replica_get(&p, b"b").unwrap().as_deref(),
        Some(&b"2"[..])
    );
    assert_eq!(store.subscriptions().unwrap(), vec![p]);
}

/// The node makes short calls to a store in memory on the async runtime, and hands every call
/// to a store on disk to the blocking pool.
#[test]
fn only_the_store_in_memory_says_it_never_waits_on_a_disk() {
    let waits: Vec<(&str, bool)> = stores()
        .iter()
        .map(|(name, store, _dir)| (*name, store.waits_on_disk()))
        .collect();
    assert_eq!(waits, [("memory", false), ("sled", true)]);
}
