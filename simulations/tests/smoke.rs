//! The CI smoke scenario with real nodes, and the seeded plan's determinism.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use mesh_sim::Scenario;
use mesh_sim::plan::{Plan, What};
use mesh_sim::scenario::Stack;

fn scenario(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).unwrap()
}

/// Runs a scenario with its own seed and asserts that every check passed. Every wait inside
/// the run has a deadline (`settle` in the scenario), and the whole run one more.
async fn run_passing(s: &Scenario) -> mesh_sim::Outcome {
    let seed = s.seed;
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        mesh_sim::run(s, seed, false),
    )
    .await
    .expect("the run ends")
    .expect("the run starts");
    let r = &outcome.report;
    let failed: Vec<_> = r.checks.iter().filter(|c| !c.passed).collect();
    assert!(
        failed.is_empty(),
        "seed {seed}: failed checks {failed:#?}\n{}",
        r.markdown()
    );
    outcome
}

/// Issue 5's acceptance: full catalog convergence, zero loss, zero duplicates applied, zero
/// forgeries accepted — with 10 real nodes. Every wait inside the run has a deadline
/// (`settle` in the scenario), so a stall fails the checks instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_scenario_converges_with_no_loss_duplicates_or_forgeries() {
    let s = scenario("ci-smoke");
    let outcome = run_passing(&s).await;
    let r = &outcome.report;
    // The figures behind the checks, so a check can never pass vacuously.
    assert_eq!(r.checks.len(), 4);
    assert!(r.catalog.initial.entries == s.nodes && r.catalog.initial.missing == 0);
    assert!(
        r.catalog.updates.entries > 0,
        "the workload published updates"
    );
    assert!(
        r.events.expected > 0 && r.events.lost == 0,
        "{:?}",
        r.events
    );
    assert_eq!(r.events.delivered, r.events.expected);
    assert_eq!(r.events.duplicates_applied, 0);
    assert_eq!(
        r.events.forgeries_accepted + r.catalog.forged_entries_accepted,
        0
    );
    assert!(r.events.latency_ms.count > 0, "latency was measured");
    assert!(r.catalog.gossip.copies_received > 0, "the tap saw gossip");
    assert!(
        r.workload.owner_announcements > 0,
        "subscribing announced consumption"
    );
    assert_eq!(r.catalog.gossip.undecodable_rpcs, 0);
    // The report renders.
    let dir = tempfile::tempdir().unwrap();
    r.write(dir.path(), &outcome.samples).unwrap();
    for file in [
        "report.json",
        "report.md",
        "catalog_cdf.svg",
        "latency_cdf.svg",
        "bandwidth.svg",
    ] {
        assert!(
            dir.path().join(file).metadata().unwrap().len() > 0,
            "{file}"
        );
    }
}

/// A preloaded catalog is held by every node from its store (counted from the nodes, not
/// assumed), and the run measures the updates alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preloaded_catalog_is_held_everywhere_and_updates_still_converge() {
    let mut s = scenario("ci-smoke");
    s.workload.initial_catalog = mesh_sim::scenario::InitialCatalog::Preloaded;
    let outcome = run_passing(&s).await;
    let r = &outcome.report;
    assert_eq!(r.catalog.preloaded_entries, s.nodes);
    assert_eq!(
        r.catalog.initial.entries, 0,
        "nothing initial was published"
    );
    assert!(r.timings.initial_catalog_s.is_some(), "every node held it");
    assert!(r.catalog.updates.entries > 0 && r.catalog.updates.missing == 0);
    assert!(r.events.expected > 0 && r.events.lost == 0);
    assert!(r.markdown().contains("preloaded"));
    assert!(r.workload.subscriptions > 0);
    assert_eq!(
        r.workload.owner_announcements, 0,
        "the preloaded entries already announced every subscription"
    );
}

/// The gossipsub baselines carry the smoke scenario's catalog workload on the same network,
/// measured by the same tap: every update reaches every node, and gossip copies are counted.
/// The node-gossipsub stack has the node's settings, a mesh of degree 4 that a publisher
/// sends to alone, where stock gossipsub's mesh of 6 and flood publishing send more copies.
/// An unchecked entry that gossipsub held instead of forwarding would leave nodes beyond the
/// first hop without it, and the check would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gossipsub_baselines_carry_the_catalog_workload() {
    let mut copies = Vec::new();
    for stack in [Stack::StockGossipsub, Stack::NodeGossipsub] {
        let mut s = scenario("ci-smoke");
        s.stack = stack;
        let outcome = run_passing(&s).await;
        let r = &outcome.report;
        assert_eq!(r.stack, stack.label());
        assert_eq!(r.checks.len(), 1, "{stack:?}: the catalog check only");
        assert!(
            r.catalog.updates.entries > 0 && r.catalog.updates.missing == 0,
            "{stack:?}: {:?}",
            r.catalog.updates
        );
        assert_eq!(r.events.expected, 0, "{stack:?}: catalog workload only");
        let gossip = &r.catalog.gossip;
        assert!(gossip.copies_received > 0, "{stack:?}: the tap saw gossip");
        assert_eq!(gossip.undecodable_rpcs, 0);
        copies.push(gossip.copies_per_delivery.expect("updates were delivered"));
    }
    // Both ran on 10 nodes; degree 4 against stock's 6.
    assert!(copies[1] < copies[0], "copies per delivery {copies:?}");
}

#[test]
fn the_same_seed_gives_the_same_topology_workload_and_faults() {
    for name in [
        "ci-smoke",
        "partition",
        "churn",
        "forge",
        "fork",
        "flood",
        "crash",
        "link",
    ] {
        let s = scenario(name);
        let a = Plan::new(&s, 42);
        let b = Plan::new(&s, 42);
        assert_eq!(a, b, "{name}");
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = Plan::new(&s, 43);
        assert_ne!(
            a.fingerprint(),
            c.fingerprint(),
            "{name}: another seed, another plan"
        );
        assert_ne!((&a.keys, &a.actions), (&c.keys, &c.actions), "{name}");
    }
}

#[test]
fn every_shipped_scenario_parses_and_has_what_its_name_says() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name.starts_with("model") {
            mesh_sim::model::ModelScenario::load(&path).unwrap();
            continue;
        }
        let s = Scenario::load(&path).unwrap();
        let plan = Plan::new(&s, s.seed);
        let has = |f: &dyn Fn(&What) -> bool| plan.actions.iter().any(|a| f(&a.what));
        match name.as_str() {
            "partition" => {
                assert!(has(&|w| matches!(w, What::Partition { .. })) && has(&|w| *w == What::Heal))
            }
            "churn" => assert!(has(&|w| matches!(w, What::Leave { crash: false, .. }))),
            "crash" => assert!(has(&|w| matches!(w, What::Leave { crash: true, .. }))),
            "forge" => {
                assert!(has(&|w| matches!(w, What::ForgeStart { .. })) && plan.forger.is_some())
            }
            "fork" => assert!(has(&|w| matches!(w, What::ForkStart { .. }))),
            "flood" => assert!(has(&|w| matches!(w, What::FloodStart { .. }))),
            "link" => assert!(has(&|w| matches!(w, What::SetLink(_)))),
            _ => {}
        }
        names.push(name);
    }
    for needed in [
        "ci-smoke",
        "100-nodes",
        "1000-nodes",
        "partition",
        "churn",
        "crash",
        "forge",
        "fork",
        "flood",
        "link",
    ] {
        assert!(
            names.iter().any(|n| n == needed),
            "scenario {needed} is missing"
        );
    }
}
