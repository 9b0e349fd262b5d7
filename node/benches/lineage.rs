//! Product-level lineage over a large synthetic data mesh, printed as a table.
//!
//!     cargo bench -p mesh-node --bench lineage            # 200k products, ~1M edges
//!     cargo bench -p mesh-node --bench lineage -- --quick # 10k products (CI smoke)
//!
//! The mesh is layered like a real one: a fifth of the products are sources (no inputs); the
//! rest sit in six layers of derived products, each with 2 to 11 inputs (6.25 on average, so 5
//! per product overall) taken from lower layers — 70% from the product's own domain, half of the
//! picks from the layer just below and half skewed towards a few heavily used products near the
//! sources (hubs such as `customers` or `orders`). 80% of edges are declared and observed, 10%
//! declared only, 10% observed only; one declared input in a thousand does not exist. Products
//! belong to 200 domains (one per 1,000 products) run by 10 nodes each. The RNG is seeded, so
//! every run builds the same graph.
//!
//! A walk's cost is proportional to what it reaches, not to the size of the graph: the table
//! gives, for each kind of walk, how many products and edges it returned on average, and the
//! latency of the traversal alone (`reach_count`) beside that of the full result (`walk`, which
//! copies every reached product's id, domain and owner into the answer). Random starting points
//! show the typical query; walks downstream from the most used sources are the worst case, where
//! 10 hops reach a large part of the graph.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use mesh_node::lineage::{Direction, Format, LineageGraph, ProductInfo};
use mesh_protocol::{ProductId, ProductName, PublicKey, SecretKey};

const SEED: u64 = 0x11AE_A6E5;
const LAYERS: usize = 7;
const SOURCE_SHARE: f64 = 0.2;
const PRODUCTS_PER_DOMAIN: usize = 1_000;
const NODES_PER_DOMAIN: usize = 10;
const LOCAL_SHARE: f64 = 0.7;
const MISSING_SHARE: f64 = 0.001;
const DEPTH: u32 = 10;

/// splitmix64: small, seeded, and the same on every platform and crate version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Both,
    Declared,
    Observed,
}

/// The mesh in compact form; `ProductInfo`s are made from it on the fly.
struct Mesh {
    ids: Vec<ProductId>,
    layer: Vec<u8>,
    domain: Vec<u32>,
    inputs: Vec<Vec<(Input, Kind)>>,
    domains: Vec<String>,
    owners: Vec<String>,
    missing: Vec<ProductId>,
}

#[derive(Clone, Copy, PartialEq)]
enum Input {
    Product(u32),
    Missing(u32),
}

impl Mesh {
    fn generate(products: usize, rng: &mut Rng) -> Self {
        let domains = (products / PRODUCTS_PER_DOMAIN).max(1);
        let keys: Vec<PublicKey> = (0..domains * NODES_PER_DOMAIN)
            .map(|n| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(n as u64 + 1).to_le_bytes());
                SecretKey::from_bytes(&seed).public()
            })
            .collect();
        let sources = (products as f64 * SOURCE_SHARE) as usize;
        let per_layer = (products - sources).div_ceil(LAYERS - 1);
        let layer_of = |i: usize| {
            if i < sources {
                0
            } else {
                1 + (i - sources) / per_layer
            }
        };

        let mut mesh = Mesh {
            ids: Vec::with_capacity(products),
            layer: Vec::with_capacity(products),
            domain: Vec::with_capacity(products),
            inputs: Vec::with_capacity(products),
            domains: (0..domains).map(|d| format!("domain-{d}")).collect(),
            owners: (0..domains)
                .map(|d| format!("team-{d}@example.com"))
                .collect(),
            missing: Vec::new(),
        };
        // Per domain, its products so far in creation (= layer) order, and where the current
        // and the previous layer start in that list.
        let mut by_domain: Vec<Vec<u32>> = vec![Vec::new(); domains];
        let mut domain_layer_start = vec![0usize; domains];
        let mut domain_prev_start = vec![0usize; domains];
        let mut layer_start = [0usize; LAYERS + 1];
        let mut current_layer = 0;
        for i in 0..products {
            let layer = layer_of(i);
            if layer != current_layer {
                current_layer = layer;
                layer_start[layer] = i;
                for d in 0..domains {
                    domain_prev_start[d] = domain_layer_start[d];
                    domain_layer_start[d] = by_domain[d].len();
                }
            }
            let d = rng.below(domains);
            let key = keys[d * NODES_PER_DOMAIN + rng.below(NODES_PER_DOMAIN)];
            let name = ProductName::new(format!("d{d}.l{layer}.p{i}")).unwrap();
            mesh.ids.push(ProductId::new(key, name));
            mesh.layer.push(layer as u8);
            mesh.domain.push(d as u32);

            let mut inputs: Vec<(Input, Kind)> = Vec::new();
            if layer > 0 {
                let degree = 2 + rng.below(9) + usize::from(rng.unit() < 0.25);
                let mut attempts = 0;
                while inputs.len() < degree && attempts < degree * 4 {
                    attempts += 1;
                    let local = rng.unit() < LOCAL_SHARE && domain_layer_start[d] > 0;
                    let (pool, end, prev): (&[u32], usize, usize) = if local {
                        (&by_domain[d], domain_layer_start[d], domain_prev_start[d])
                    } else {
                        (&[], layer_start[layer], layer_start[layer - 1])
                    };
                    let position = if rng.unit() < 0.5 && prev < end {
                        prev + rng.below(end - prev)
                    } else {
                        // Skewed towards the front: the sources and the first products built
                        // on them are used by many.
                        ((end as f64) * rng.unit().powi(3)) as usize
                    };
                    let picked = if local {
                        pool[position.min(end - 1)]
                    } else {
                        position.min(end - 1) as u32
                    };
                    let input = if rng.unit() < MISSING_SHARE {
                        let n = mesh.missing.len();
                        let key = keys[rng.below(keys.len())];
                        let name = ProductName::new(format!("gone.p{n}")).unwrap();
                        mesh.missing.push(ProductId::new(key, name));
                        Input::Missing(n as u32)
                    } else {
                        Input::Product(picked)
                    };
                    if inputs.iter().any(|(existing, _)| *existing == input) {
                        continue;
                    }
                    let roll = rng.unit();
                    let kind = match input {
                        Input::Missing(_) => Kind::Declared,
                        _ if roll < 0.8 => Kind::Both,
                        _ if roll < 0.9 => Kind::Declared,
                        _ => Kind::Observed,
                    };
                    inputs.push((input, kind));
                }
            }
            mesh.inputs.push(inputs);
            by_domain[d].push(i as u32);
        }
        mesh
    }

    fn id(&self, input: Input) -> &ProductId {
        match input {
            Input::Product(i) => &self.ids[i as usize],
            Input::Missing(i) => &self.missing[i as usize],
        }
    }

    fn infos(&self) -> impl Iterator<Item = ProductInfo> + '_ {
        self.ids.iter().enumerate().map(|(i, id)| {
            let inputs = &self.inputs[i];
            let of = |keep: fn(Kind) -> bool| -> Vec<ProductId> {
                inputs
                    .iter()
                    .filter(|(_, kind)| keep(*kind))
                    .map(|(input, _)| self.id(*input).clone())
                    .collect()
            };
            let d = self.domain[i] as usize;
            ProductInfo {
                id: id.clone(),
                domain: self.domains[d].clone(),
                owner: self.owners[d].clone(),
                declared_inputs: of(|k| k != Kind::Observed),
                observed_inputs: of(|k| k != Kind::Declared),
                updated_micros: i as u64,
            }
        })
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

struct Row {
    what: String,
    samples: Vec<Duration>,
    traverse: Vec<Duration>,
    /// Products reached by each walk.
    reached: Vec<usize>,
    edges: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Times `walk` and `reach_count` from each root; with `json`, the walk's time includes
/// rendering the answer as JSON.
fn measure(
    graph: &LineageGraph,
    what: &str,
    roots: &[&ProductId],
    direction: Direction,
    json: bool,
) -> Row {
    let mut row = Row {
        what: what.to_owned(),
        samples: Vec::with_capacity(roots.len()),
        traverse: Vec::with_capacity(roots.len()),
        reached: Vec::with_capacity(roots.len()),
        edges: 0,
    };
    for root in roots {
        let started = Instant::now();
        let count = graph.reach_count(root, direction, DEPTH).unwrap();
        row.traverse.push(started.elapsed());

        let started = Instant::now();
        let lineage = graph.walk(root, direction, DEPTH).unwrap();
        let rendered = json.then(|| lineage.render(Format::Json));
        row.samples.push(started.elapsed());
        assert_eq!(lineage.nodes.len(), count);
        row.reached.push(lineage.nodes.len());
        row.edges += lineage.edges.len();
        drop(rendered);
    }
    row.samples.sort();
    row.traverse.sort();
    row.reached.sort();
    row
}

fn measure_impact(graph: &LineageGraph, roots: &[&ProductId]) -> Row {
    let mut row = Row {
        what: "impact (downstream + owners), random products".into(),
        samples: Vec::with_capacity(roots.len()),
        traverse: Vec::new(),
        reached: Vec::with_capacity(roots.len()),
        edges: 0,
    };
    for root in roots {
        let started = Instant::now();
        let impact = graph.impact(root, DEPTH).unwrap();
        row.samples.push(started.elapsed());
        row.reached.push(impact.affected.len());
    }
    row.samples.sort();
    row.reached.sort();
    row
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let products = if quick { 10_000 } else { 200_000 };
    let walks = if quick { 100 } else { 300 };
    let mut rng = Rng(SEED);

    let started = Instant::now();
    let mesh = Mesh::generate(products, &mut rng);
    let generated = started.elapsed();

    let rss_before = rss_bytes();
    // What a node does with its catalog: one owned `ProductInfo` per entry, then the build.
    let started = Instant::now();
    let infos: Vec<ProductInfo> = mesh.infos().collect();
    let inputs_made = started.elapsed();
    let started = Instant::now();
    let graph = LineageGraph::build(infos);
    let built = started.elapsed();
    let rss_after = rss_bytes();

    let started = Instant::now();
    let health = graph.health();
    let health_took = started.elapsed();

    // Random roots for the typical query; consumers (top layer) for provenance; the sources
    // with the most consumers for the worst case.
    let random: Vec<&ProductId> = (0..walks)
        .map(|_| &mesh.ids[rng.below(mesh.ids.len())])
        .collect();
    let top = *mesh.layer.iter().max().unwrap_or(&0);
    let consumers: Vec<&ProductId> = mesh
        .ids
        .iter()
        .zip(&mesh.layer)
        .filter(|(_, layer)| **layer == top)
        .map(|(id, _)| id)
        .collect();
    let consumers: Vec<&ProductId> = (0..walks)
        .map(|_| consumers[rng.below(consumers.len())])
        .collect();
    let mut fan_out = vec![0u32; mesh.ids.len()];
    for inputs in &mesh.inputs {
        for (input, _) in inputs {
            if let Input::Product(i) = input {
                fan_out[*i as usize] += 1;
            }
        }
    }
    let mut hubs: Vec<usize> = (0..mesh.ids.len())
        .filter(|&i| mesh.layer[i] == 0)
        .collect();
    hubs.sort_by_key(|&i| std::cmp::Reverse(fan_out[i]));
    let hubs: Vec<&ProductId> = hubs
        .iter()
        .take(10)
        .cycle()
        .take(50)
        .map(|&i| &mesh.ids[i])
        .collect();

    // Warm the caches once, as a serving node would be.
    for root in random.iter().take(20) {
        graph.walk(root, Direction::Upstream, DEPTH).unwrap();
    }

    let rows = vec![
        measure(
            &graph,
            "upstream, random products",
            &random,
            Direction::Upstream,
            false,
        ),
        measure(
            &graph,
            "downstream, random products",
            &random,
            Direction::Downstream,
            false,
        ),
        measure(
            &graph,
            "upstream, random products, answer rendered as JSON",
            &random,
            Direction::Upstream,
            true,
        ),
        measure(
            &graph,
            "upstream, from consumers (top layer)",
            &consumers,
            Direction::Upstream,
            false,
        ),
        measure(
            &graph,
            "downstream, from the 10 most used sources (worst case)",
            &hubs,
            Direction::Downstream,
            false,
        ),
        measure_impact(&graph, &random),
    ];

    println!(
        "lineage graph: {} products ({} missing inputs), {} edges, seed {SEED:#x}; \
         generated in {:.2} s",
        graph.product_count(),
        graph.missing_count(),
        graph.edge_count(),
        generated.as_secs_f64()
    );
    let rss_delta = rss_after.saturating_sub(rss_before);
    println!(
        "build: {:.0} ms (+ {:.0} ms to make the ProductInfos); RSS +{:.1} MiB ({:.0} B/product, \
         including the ProductInfos, freed but kept by the allocator); the graph holds \
         ~{:.1} MiB ({:.0} B/product)",
        ms(built),
        ms(inputs_made),
        rss_delta as f64 / (1 << 20) as f64,
        rss_delta as f64 / graph.product_count() as f64,
        graph.memory_bytes() as f64 / (1 << 20) as f64,
        graph.memory_bytes() as f64 / graph.product_count() as f64,
    );
    println!(
        "health: {:.0} ms ({} missing inputs, {} cycles, {} undeclared consumptions, \
         {} declared inputs not consumed)\n",
        ms(health_took),
        health.totals.missing_inputs,
        health.totals.cycles,
        health.totals.undeclared_consumption,
        health.totals.declared_not_consumed
    );
    println!(
        "| {DEPTH}-hop walk | walks | p50 ms | p95 ms | p99 ms | max ms | avg products | \
         products p50 / max | avg edges | traversal only p95 ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &rows {
        let n = row.samples.len().max(1);
        let traverse = if row.traverse.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.3}", ms(quantile(&row.traverse, 0.95)))
        };
        let edges = if row.edges == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}", row.edges as f64 / n as f64)
        };
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {} / {} | {} | {} |",
            row.what,
            row.samples.len(),
            ms(quantile(&row.samples, 0.5)),
            ms(quantile(&row.samples, 0.95)),
            ms(quantile(&row.samples, 0.99)),
            ms(row.samples.last().copied().unwrap_or_default()),
            row.reached.iter().sum::<usize>() as f64 / n as f64,
            row.reached.get(row.reached.len() / 2).copied().unwrap_or(0),
            row.reached.last().copied().unwrap_or(0),
            edges,
            traverse,
        );
    }
}
