//! The seeded plan of a run: keys, topology, products, subscriptions, and every action of the
//! workload and of the fault schedule, with its time. Drawn from one ChaCha stream seeded by
//! the run's seed, so the same scenario and seed always give the same plan
//! ([`Plan::fingerprint`] shows it in every report).

use std::collections::BTreeSet;
use std::time::Duration;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::net::LinkModel;
use crate::scenario::{Fault, Scenario, TopologyKind};

/// A product of the plan: its owner and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedProduct {
    pub owner: usize,
    pub name: String,
}

/// What happens at one moment of the run.
#[derive(Clone, Debug, PartialEq)]
pub enum What {
    /// The owner appends an event to `product` (record key `k{key}`).
    Append {
        product: usize,
        key: u32,
    },
    /// The owner publishes `product`'s descriptor again (next revision).
    Update {
        product: usize,
    },
    /// A node goes down: gracefully, or as a crash (connections reset first).
    Leave {
        node: usize,
        crash: bool,
    },
    /// A node that left restarts from its store.
    Rejoin {
        node: usize,
    },
    Partition {
        sides: Vec<u8>,
    },
    Heal,
    /// The forging relay connects to every subscriber of these products.
    ForgeStart {
        products: Vec<usize>,
    },
    /// `product`'s owner is replaced by a same-key twin with an empty store.
    ForkStart {
        product: usize,
    },
    ForkEnd {
        product: usize,
    },
    FloodStart {
        peers: Vec<usize>,
        rate: f64,
    },
    FloodEnd,
    SetLink(LinkModel),
}

impl What {
    pub fn is_fault(&self) -> bool {
        !matches!(self, What::Append { .. } | What::Update { .. })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    /// From the start of the workload.
    pub at: Duration,
    pub what: What,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub seed: u64,
    pub nodes: usize,
    /// Identity key seed of each node.
    pub keys: Vec<[u8; 32]>,
    /// Domain (cluster) of each node.
    pub domains: Vec<usize>,
    /// Undirected bootstrap links `(a, b)` with `a < b`; `b` dials `a`.
    pub edges: Vec<(usize, usize)>,
    pub products: Vec<PlannedProduct>,
    /// Products each node subscribes to (indices into `products`).
    pub subscriptions: Vec<Vec<usize>>,
    /// The node that serves forged events, if the scenario has a forge fault.
    pub forger: Option<usize>,
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn new(scenario: &Scenario, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let n = scenario.nodes;
        let keys: Vec<[u8; 32]> = (0..n).map(|_| rng.random()).collect();
        let (edges, domains) = topology(scenario, &mut rng);
        let w = &scenario.workload;
        let products: Vec<PlannedProduct> = (0..n)
            .flat_map(|owner| {
                (0..w.products_per_node).map(move |k| PlannedProduct {
                    owner,
                    name: format!("p{owner}-{k}"),
                })
            })
            .collect();
        let mut subscriptions: Vec<Vec<usize>> = (0..n)
            .map(|node| {
                let others: Vec<usize> = (0..products.len())
                    .filter(|&p| products[p].owner != node)
                    .collect();
                let mut chosen: Vec<usize> = others
                    .choose_multiple(&mut rng, w.subscriptions_per_node)
                    .copied()
                    .collect();
                chosen.sort_unstable();
                chosen
            })
            .collect();

        let mut actions = Vec::new();
        let duration = scenario.duration.as_secs_f64();
        for (rate, is_update) in [(w.event_rate, false), (w.catalog_update_rate, true)] {
            if rate <= 0.0 {
                continue;
            }
            let mut t = 0.0;
            loop {
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                t += -u.ln() / rate;
                if t >= duration {
                    break;
                }
                let product = rng.random_range(0..products.len());
                let what = if is_update {
                    What::Update { product }
                } else {
                    What::Append {
                        product,
                        key: rng.random_range(0..1000),
                    }
                };
                actions.push(Action {
                    at: Duration::from_secs_f64(t),
                    what,
                });
            }
        }

        let forger = scenario
            .faults
            .iter()
            .any(|f| matches!(f, Fault::Forge { .. }))
            .then(|| rng.random_range(0..n));
        let mut busy: BTreeSet<usize> = forger.into_iter().collect();
        let pick_nodes = |rng: &mut ChaCha20Rng, count: usize, busy: &mut BTreeSet<usize>| {
            let free: Vec<usize> = (0..n).filter(|i| !busy.contains(i)).collect();
            let chosen: Vec<usize> = free.choose_multiple(rng, count).copied().collect();
            busy.extend(&chosen);
            chosen
        };
        for fault in &scenario.faults {
            match fault {
                Fault::Churn {
                    at,
                    nodes,
                    down_for,
                }
                | Fault::Crash {
                    at,
                    nodes,
                    down_for,
                } => {
                    let crash = matches!(fault, Fault::Crash { .. });
                    for node in pick_nodes(&mut rng, *nodes, &mut busy) {
                        actions.push(Action {
                            at: *at,
                            what: What::Leave { node, crash },
                        });
                        actions.push(Action {
                            at: *at + *down_for,
                            what: What::Rejoin { node },
                        });
                    }
                }
                Fault::Partition {
                    at,
                    fraction,
                    heal_after,
                } => {
                    let minority = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
                    let mut order: Vec<usize> = (0..n).collect();
                    order.shuffle(&mut rng);
                    let mut sides = vec![0u8; n];
                    for &i in &order[..minority] {
                        sides[i] = 1;
                    }
                    actions.push(Action {
                        at: *at,
                        what: What::Partition { sides },
                    });
                    actions.push(Action {
                        at: *at + *heal_after,
                        what: What::Heal,
                    });
                }
                Fault::Forge {
                    at,
                    products: count,
                    down_for,
                } => {
                    let Some(forger) = forger else { continue };
                    // Products with a subscriber other than the forger, owned by someone else.
                    let candidates: Vec<usize> = (0..products.len())
                        .filter(|&p| {
                            products[p].owner != forger && !busy.contains(&products[p].owner)
                        })
                        .filter(|&p| {
                            subscriptions
                                .iter()
                                .enumerate()
                                .any(|(s, subs)| s != forger && subs.contains(&p))
                        })
                        .collect();
                    let mut targets: Vec<usize> = candidates
                        .choose_multiple(&mut rng, *count)
                        .copied()
                        .collect();
                    targets.sort_unstable();
                    for &p in &targets {
                        if !subscriptions[forger].contains(&p) {
                            subscriptions[forger].push(p);
                        }
                    }
                    subscriptions[forger].sort_unstable();
                    let owners: BTreeSet<usize> =
                        targets.iter().map(|&p| products[p].owner).collect();
                    busy.extend(&owners);
                    actions.push(Action {
                        at: *at,
                        what: What::ForgeStart { products: targets },
                    });
                    for owner in owners {
                        actions.push(Action {
                            at: *at + Duration::from_millis(100),
                            what: What::Leave {
                                node: owner,
                                crash: false,
                            },
                        });
                        actions.push(Action {
                            at: *at + *down_for,
                            what: What::Rejoin { node: owner },
                        });
                    }
                }
                Fault::Fork { at, down_for } => {
                    let candidates: Vec<usize> = (0..products.len())
                        .filter(|&p| !busy.contains(&products[p].owner))
                        .filter(|&p| subscriptions.iter().any(|subs| subs.contains(&p)))
                        .collect();
                    let Some(&product) = candidates.choose(&mut rng) else {
                        continue;
                    };
                    busy.insert(products[product].owner);
                    actions.push(Action {
                        at: *at,
                        what: What::ForkStart { product },
                    });
                    actions.push(Action {
                        at: *at + *down_for,
                        what: What::ForkEnd { product },
                    });
                }
                Fault::Flood {
                    at,
                    duration,
                    rate,
                    peers,
                } => {
                    let mut peers: Vec<usize> = (0..n)
                        .collect::<Vec<_>>()
                        .choose_multiple(&mut rng, (*peers).min(n))
                        .copied()
                        .collect();
                    peers.sort_unstable();
                    actions.push(Action {
                        at: *at,
                        what: What::FloodStart { peers, rate: *rate },
                    });
                    actions.push(Action {
                        at: *at + *duration,
                        what: What::FloodEnd,
                    });
                }
                Fault::Link {
                    at,
                    duration,
                    delay,
                    jitter,
                    loss,
                } => {
                    actions.push(Action {
                        at: *at,
                        what: What::SetLink(LinkModel {
                            delay: *delay,
                            jitter: *jitter,
                            loss: *loss,
                            ..LinkModel::default()
                        }),
                    });
                    actions.push(Action {
                        at: *at + *duration,
                        what: What::SetLink(base_link(scenario)),
                    });
                }
            }
        }
        // Stable: actions at the same instant keep the order they were drawn in.
        actions.sort_by_key(|a| a.at);
        Self {
            seed,
            nodes: n,
            keys,
            domains,
            edges,
            products,
            subscriptions,
            forger,
            actions,
        }
    }

    /// A short hash of the whole plan: equal plans have equal fingerprints.
    pub fn fingerprint(&self) -> String {
        let hash = blake3::hash(format!("{self:?}").as_bytes());
        hash.to_hex()[..16].to_owned()
    }

    /// The nodes that subscribe to `product`.
    pub fn subscribers(&self, product: usize) -> Vec<usize> {
        (0..self.nodes)
            .filter(|&s| self.subscriptions[s].contains(&product))
            .collect()
    }

    /// Neighbours of `node` in the bootstrap topology.
    pub fn neighbours(&self, node: usize) -> Vec<usize> {
        self.edges
            .iter()
            .filter_map(|&(a, b)| {
                if a == node {
                    Some(b)
                } else if b == node {
                    Some(a)
                } else {
                    None
                }
            })
            .collect()
    }

    pub fn count(&self, f: impl Fn(&What) -> bool) -> usize {
        self.actions.iter().filter(|a| f(&a.what)).count()
    }
}

/// The link model a scenario starts with.
pub fn base_link(scenario: &Scenario) -> LinkModel {
    LinkModel {
        delay: scenario.link.delay,
        jitter: scenario.link.jitter,
        loss: scenario.link.loss,
        ..LinkModel::default()
    }
}

fn topology(scenario: &Scenario, rng: &mut ChaCha20Rng) -> (Vec<(usize, usize)>, Vec<usize>) {
    let n = scenario.nodes;
    let t = &scenario.topology;
    let mut edges = BTreeSet::new();
    let add = |a: usize, b: usize, edges: &mut BTreeSet<(usize, usize)>| {
        if a != b {
            edges.insert((a.min(b), a.max(b)));
        }
    };
    let mut domains = vec![0; n];
    match t.kind {
        TopologyKind::Line | TopologyKind::Ring => {
            for i in 1..n {
                add(i - 1, i, &mut edges);
            }
            if t.kind == TopologyKind::Ring && n > 2 {
                add(0, n - 1, &mut edges);
            }
        }
        TopologyKind::Random => {
            random_graph(&(0..n).collect::<Vec<_>>(), t.degree, rng, &mut edges)
        }
        TopologyKind::Clustered => {
            let clusters = t.clusters.clamp(1, n);
            let members: Vec<Vec<usize>> = (0..clusters)
                .map(|c| (0..n).filter(|i| i * clusters / n == c).collect())
                .collect();
            for (c, m) in members.iter().enumerate() {
                for &i in m {
                    domains[i] = c;
                }
                random_graph(m, t.degree, rng, &mut edges);
            }
            if clusters > 1 {
                for (c, m) in members.iter().enumerate() {
                    for _ in 0..t.bridges {
                        let other = (c + rng.random_range(1..clusters)) % clusters;
                        let (Some(&a), Some(&b)) = (m.choose(rng), members[other].choose(rng))
                        else {
                            continue;
                        };
                        add(a, b, &mut edges);
                    }
                }
            }
        }
    }
    (edges.into_iter().collect(), domains)
}

/// A connected random graph over `nodes` with about `degree` links per node: a random ring,
/// then random chords.
fn random_graph(
    nodes: &[usize],
    degree: usize,
    rng: &mut ChaCha20Rng,
    edges: &mut BTreeSet<(usize, usize)>,
) {
    let n = nodes.len();
    if n < 2 {
        return;
    }
    let mut order = nodes.to_vec();
    order.shuffle(rng);
    let mut local = BTreeSet::new();
    for i in 0..n {
        let (a, b) = (order[i], order[(i + 1) % n]);
        if a != b {
            local.insert((a.min(b), a.max(b)));
        }
    }
    let target = (n * degree / 2).min(n * (n - 1) / 2);
    let mut tries = 0;
    while local.len() < target && tries < target * 20 {
        tries += 1;
        let (a, b) = (nodes[rng.random_range(0..n)], nodes[rng.random_range(0..n)]);
        if a != b {
            local.insert((a.min(b), a.max(b)));
        }
    }
    edges.extend(local);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(kind: &str) -> Scenario {
        toml::from_str(&format!(
            "name = \"t\"\nnodes = 30\nduration = \"5s\"\n[topology]\nkind = \"{kind}\"\ndegree = 4\n\
             [workload]\nevent_rate = 10.0\ncatalog_update_rate = 2.0\n\
             [[fault]]\nkind = \"churn\"\nat = \"1s\"\nnodes = 3\ndown_for = \"1s\"\n\
             [[fault]]\nkind = \"partition\"\nat = \"2s\"\nfraction = 0.3\nheal_after = \"1s\"\n"
        ))
        .unwrap()
    }

    fn connected(plan: &Plan) -> bool {
        let mut seen = vec![false; plan.nodes];
        let mut stack = vec![0];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            stack.extend(plan.neighbours(i));
        }
        seen.iter().all(|&s| s)
    }

    #[test]
    fn every_topology_is_connected_with_the_asked_shape() {
        for kind in ["random", "clustered", "line", "ring"] {
            let plan = Plan::new(&scenario(kind), 3);
            assert!(connected(&plan), "{kind} is not connected");
            match kind {
                "line" => assert_eq!(plan.edges.len(), 29),
                "ring" => assert_eq!(plan.edges.len(), 30),
                "random" => assert!(
                    (55..=60).contains(&plan.edges.len()),
                    "{}",
                    plan.edges.len()
                ),
                _ => assert!(plan.domains.contains(&3)),
            }
        }
    }

    #[test]
    fn the_plan_has_the_workload_and_faults_asked_for() {
        let plan = Plan::new(&scenario("random"), 9);
        let appends = plan.count(|w| matches!(w, What::Append { .. }));
        // 10 events/s for 5 s: Poisson, so near 50.
        assert!((25..=80).contains(&appends), "{appends}");
        assert_eq!(plan.count(|w| matches!(w, What::Leave { .. })), 3);
        assert_eq!(plan.count(|w| matches!(w, What::Rejoin { .. })), 3);
        assert_eq!(plan.count(|w| *w == What::Heal), 1);
        assert!(plan.actions.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(plan.subscriptions.iter().all(|s| s.len() == 2));
        for (node, subs) in plan.subscriptions.iter().enumerate() {
            assert!(subs.iter().all(|&p| plan.products[p].owner != node));
        }
    }
}
