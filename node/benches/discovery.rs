//! Ranked discovery over a large synthetic catalog, printed as a table.
//!
//!     cargo bench -p mesh-node --bench discovery            # 100k products
//!     cargo bench -p mesh-node --bench discovery -- --quick # 2k products (CI smoke)
//!
//! The catalog looks like a real one: 24 domains with three owning teams each, 8 signing keys,
//! descriptions of 12 to 40 words and 4 to 16 schema fields drawn from a vocabulary of 150
//! business words and 3,000 rarer ones with a skewed (Zipf-like) frequency, 1 to 5 tags from 60,
//! a tenth of the fields holding PII, versions 0.x to 3.x. The RNG is seeded, so every run
//! builds the same catalog and asks the same queries.
//!
//! Queries of six kinds, each timed alone through `SearchIndex::search` (analysis, scoring,
//! facets over all matches and the page of 20 hits): one rare word; one of the most common
//! words (tens of thousands of matches, all counted into the facets); two words; a product's
//! exact name; filters alone (an empty query and a domain); a word and a domain. Then upserts
//! of new revisions, each followed by a search for a word only the new revision has: the
//! upsert is queued (every `commit_threshold()`th one commits: `PENDING_MAX` less up to a
//! quarter, drawn per index), the search scans the pending upserts
//! beside tantivy's committed segments. Memory per product is the growth of the process's RSS
//! while the index is built (the signed entries already exist before), and the size of
//! tantivy's index alone.
//!
//! Each query is asked in several rounds. Besides the percentiles of every sample, the table
//! gives those of each query's fastest round: on a machine shared with other work, a query
//! that loses the CPU for a scheduler slice (a few ms) shows in the first and not the second.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use mesh_node::search::{SearchIndex, SearchRequest};
use mesh_protocol::descriptor::Slo;
use mesh_protocol::{
    AccessPolicy, CatalogEntry, Config, Descriptor, Field, FieldType, ProductId, ProductName,
    SecretKey, VerifiedCatalogEntry,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEED: u64 = 0xD15C_0BE7;
const KEYS: u8 = 8;

const COMMON: &[&str] = &[
    "customer",
    "order",
    "data",
    "daily",
    "event",
    "account",
    "payment",
    "product",
    "record",
    "status",
    "invoice",
    "price",
    "amount",
    "region",
    "store",
    "user",
    "session",
    "campaign",
    "shipment",
    "stock",
    "warehouse",
    "supplier",
    "contract",
    "ledger",
    "balance",
    "refund",
    "discount",
    "currency",
    "country",
    "channel",
    "device",
    "click",
    "impression",
    "lead",
    "opportunity",
    "subscription",
    "plan",
    "churn",
    "revenue",
    "cost",
    "margin",
    "forecast",
    "budget",
    "employee",
    "payroll",
    "department",
    "ticket",
    "incident",
    "sla",
    "agent",
    "call",
    "email",
    "phone",
    "address",
    "postcode",
    "city",
    "delivery",
    "carrier",
    "route",
    "vehicle",
    "fleet",
    "sensor",
    "reading",
    "temperature",
    "energy",
    "meter",
    "tariff",
    "claim",
    "policy",
    "premium",
    "risk",
    "score",
    "fraud",
    "transaction",
    "card",
    "merchant",
    "terminal",
    "settlement",
    "fee",
    "tax",
    "vat",
    "audit",
    "compliance",
    "consent",
    "profile",
    "segment",
    "cohort",
    "retention",
    "visit",
    "page",
    "search",
    "basket",
    "checkout",
    "return",
    "review",
    "rating",
    "catalog",
    "category",
    "brand",
    "sku",
    "batch",
    "snapshot",
    "history",
    "latest",
    "aggregate",
    "summary",
    "metric",
    "kpi",
    "dimension",
    "fact",
    "raw",
    "clean",
    "curated",
    "enriched",
    "hourly",
    "weekly",
    "monthly",
    "quarterly",
    "annual",
    "global",
    "europe",
    "america",
    "asia",
    "partner",
    "vendor",
    "procurement",
    "purchase",
    "quote",
    "shipping",
    "inventory",
    "pick",
    "pack",
    "dispatch",
    "returned",
    "damaged",
    "quality",
    "inspection",
    "maintenance",
    "asset",
    "depreciation",
    "loan",
    "interest",
    "mortgage",
    "credit",
    "debit",
];
const DOMAINS: &[&str] = &[
    "sales",
    "billing",
    "logistics",
    "marketing",
    "crm",
    "finance",
    "hr",
    "inventory",
    "support",
    "payments",
    "risk",
    "fraud",
    "procurement",
    "web",
    "mobile",
    "iot",
    "energy",
    "insurance",
    "lending",
    "treasury",
    "legal",
    "compliance",
    "catalog",
    "fleet",
];
const TAG_COUNT: usize = 60;
const RARE_WORDS: usize = 3_000;
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "bo", "da", "fe", "gu", "hi", "jo", "pu",
];

struct Vocabulary {
    rare: Vec<String>,
    tags: Vec<String>,
}

impl Vocabulary {
    fn new(rng: &mut StdRng) -> Self {
        let mut rare = Vec::with_capacity(RARE_WORDS);
        while rare.len() < RARE_WORDS {
            let len = rng.random_range(3..6);
            let word: String = (0..len)
                .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
                .collect();
            if !rare.contains(&word) {
                rare.push(word);
            }
        }
        let tags = (0..TAG_COUNT)
            .map(|i| match i {
                0 => "gold".to_owned(),
                1 => "silver".to_owned(),
                2 => "bronze".to_owned(),
                3 => "pii".to_owned(),
                4 => "gdpr".to_owned(),
                _ => format!("{}-{}", COMMON[i % COMMON.len()], i),
            })
            .collect();
        Self { rare, tags }
    }

    /// A word: mostly common ones, skewed towards the head of each list.
    fn word(&self, rng: &mut StdRng) -> &str {
        let skew = |rng: &mut StdRng, n: usize| ((rng.random::<f64>().powi(3)) * n as f64) as usize;
        if rng.random_bool(0.8) {
            COMMON[skew(rng, COMMON.len()).min(COMMON.len() - 1)]
        } else {
            &self.rare[skew(rng, self.rare.len()).min(self.rare.len() - 1)]
        }
    }

    fn words(&self, rng: &mut StdRng, n: usize) -> String {
        (0..n).map(|_| self.word(rng)).collect::<Vec<_>>().join(" ")
    }
}

fn descriptor(rng: &mut StdRng, vocab: &Vocabulary, i: usize) -> Descriptor {
    let domain = DOMAINS[rng.random_range(0..DOMAINS.len())];
    let name = format!("{}-{}-{i}", vocab.word(rng), vocab.word(rng));
    let description = {
        let n = rng.random_range(12..=40);
        let mut text = vocab.words(rng, n);
        text.push('.');
        text
    };
    let mut tags: Vec<String> = (0..rng.random_range(1..=5))
        .map(|_| {
            let t = ((rng.random::<f64>().powi(2)) * TAG_COUNT as f64) as usize;
            vocab.tags[t.min(TAG_COUNT - 1)].clone()
        })
        .collect();
    tags.sort();
    tags.dedup();
    let fields = (0..rng.random_range(4..=16))
        .map(|f| {
            let pii = rng.random_bool(0.1);
            Field {
                name: if pii {
                    ["email", "phone", "full_name", "address", "birth_date"][f % 5].to_owned()
                } else {
                    format!("{}_{}", vocab.word(rng), vocab.word(rng))
                },
                field_type: FieldType::ALL[rng.random_range(0..FieldType::ALL.len())],
                pii,
                nullable: rng.random_bool(0.3),
                description: if rng.random_bool(0.7) {
                    let n = rng.random_range(3..=8);
                    vocab.words(rng, n)
                } else {
                    String::new()
                },
            }
        })
        .collect();
    Descriptor {
        name: ProductName::new(name).unwrap(),
        domain: domain.to_owned(),
        owner: format!("{domain}-team-{}@corp.example", rng.random_range(0..3)),
        description,
        tags,
        version: semver::Version::new(
            rng.random_range(0..4),
            rng.random_range(0..10),
            rng.random_range(0..20),
        ),
        fields,
        output_ports: Vec::new(),
        inputs: Vec::new(),
        slo: Slo::default(),
        access: AccessPolicy::Public,
    }
}

fn sign(keys: &[SecretKey], i: usize, revision: u64, d: Descriptor) -> VerifiedCatalogEntry {
    let key = &keys[i % keys.len()];
    CatalogEntry {
        product: ProductId::new(key.public(), d.name.clone()),
        revision,
        timestamp_micros: 1_760_000_000_000_000 + i as u64,
        descriptor: d,
        consumes: Vec::new(),
    }
    .sign(key, &Config::default())
    .unwrap()
}

/// Signs on every core: 100k signatures take a few seconds on one.
fn sign_all(keys: &[SecretKey], descriptors: Vec<Descriptor>) -> Vec<VerifiedCatalogEntry> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = descriptors.len().div_ceil(threads).max(1);
    let mut indexed: Vec<(usize, Descriptor)> = descriptors.into_iter().enumerate().collect();
    let mut chunks = Vec::new();
    while !indexed.is_empty() {
        let rest = indexed.split_off(chunk.min(indexed.len()));
        chunks.push(std::mem::replace(&mut indexed, rest));
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| {
                scope.spawn(move || {
                    c.into_iter()
                        .map(|(i, d)| sign(keys, i, 1, d))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

struct Latencies {
    what: String,
    samples: Vec<Duration>,
    /// Per distinct request, its fastest round: on a machine shared with other work this
    /// leaves out the time slices the scheduler gave to others. Empty where not measured.
    best: Vec<Duration>,
    matches: usize,
}

fn quantile_ms(samples: &[Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    let i = ((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1;
    s[i].as_secs_f64() * 1e3
}

impl Latencies {
    fn ms(&self, q: f64) -> f64 {
        quantile_ms(&self.samples, q)
    }
}

fn time_queries(
    index: &SearchIndex,
    what: &str,
    requests: &[SearchRequest],
    rounds: usize,
) -> Latencies {
    let mut samples = Vec::with_capacity(requests.len() * rounds);
    let mut best = vec![Duration::MAX; requests.len()];
    let mut matches = 0;
    for r in requests {
        index.search(r).unwrap(); // warm
    }
    for _ in 0..rounds {
        for (r, best) in requests.iter().zip(&mut best) {
            let started = Instant::now();
            let response = index.search(r).unwrap();
            let elapsed = started.elapsed();
            samples.push(elapsed);
            *best = (*best).min(elapsed);
            matches += response.total;
        }
    }
    Latencies {
        what: what.to_owned(),
        matches: matches / samples.len().max(1),
        samples,
        best,
    }
}

fn query(text: &str) -> SearchRequest {
    SearchRequest {
        query: text.to_owned(),
        ..SearchRequest::default()
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let products = if quick { 2_000 } else { 100_000 };
    let per_kind = if quick { 10 } else { 100 };
    let rounds = if quick { 1 } else { 3 };
    // Most likely not a multiple of the commit threshold, so that upserts are left pending.
    let updates = if quick { 300 } else { 1_000 };

    let mut rng = StdRng::seed_from_u64(SEED);
    let vocab = Vocabulary::new(&mut rng);
    let keys: Vec<SecretKey> = (1..=KEYS)
        .map(|k| SecretKey::from_bytes(&[k; 32]))
        .collect();
    let started = Instant::now();
    let descriptors: Vec<Descriptor> = (0..products)
        .map(|i| descriptor(&mut rng, &vocab, i))
        .collect();
    let entries = sign_all(&keys, descriptors);
    let signed_s = started.elapsed().as_secs_f64();

    // Build.
    let rss_before = rss_bytes();
    let started = Instant::now();
    let index = SearchIndex::new().unwrap();
    index.upsert_many(&entries).unwrap();
    let build_s = started.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    let index_bytes = index.index_bytes().unwrap();
    assert_eq!(index.len(), products);

    // Queries: rare words appear in a handful of products, common ones in tens of thousands.
    let pick = |rng: &mut StdRng| &entries[rng.random_range(0..entries.len())];
    let rare: Vec<_> = (0..per_kind)
        .map(|_| query(&vocab.rare[rng.random_range(RARE_WORDS / 2..RARE_WORDS)]))
        .collect();
    let common: Vec<_> = (0..per_kind).map(|i| query(COMMON[i % 5])).collect();
    let two: Vec<_> = (0..per_kind)
        .map(|_| {
            // Two words of one product's description, so that the pair matches something.
            let e = pick(&mut rng);
            let words: Vec<&str> = e
                .entry()
                .descriptor
                .description
                .trim_end_matches('.')
                .split(' ')
                .collect();
            let a = words[rng.random_range(0..words.len())];
            let b = words[rng.random_range(0..words.len())];
            query(&format!("{a} {b}"))
        })
        .collect();
    let names: Vec<_> = (0..per_kind)
        .map(|_| query(pick(&mut rng).product().name().as_str()))
        .collect();
    let filters: Vec<_> = (0..per_kind)
        .map(|i| SearchRequest {
            domain: Some(DOMAINS[i % DOMAINS.len()].to_owned()),
            ..SearchRequest::default()
        })
        .collect();
    let word_and_domain: Vec<_> = (0..per_kind)
        .map(|i| SearchRequest {
            domain: Some(DOMAINS[i % DOMAINS.len()].to_owned()),
            ..query(COMMON[5 + i % 40])
        })
        .collect();

    // Every exact-name query finds its product first.
    for r in &names {
        let hit = &index.search(r).unwrap().hits[0];
        assert_eq!(hit.name, r.query, "a product's own name must rank it first");
    }

    let mut rows = vec![
        time_queries(&index, "one rare word", &rare, rounds),
        time_queries(&index, "one common word", &common, rounds),
        time_queries(&index, "two words", &two, rounds),
        time_queries(&index, "exact product name", &names, rounds),
        time_queries(&index, "filter only (domain)", &filters, rounds),
        time_queries(&index, "word + domain filter", &word_and_domain, rounds),
    ];
    let all = Latencies {
        what: "all of the above".to_owned(),
        samples: rows.iter().flat_map(|r| r.samples.clone()).collect(),
        best: rows.iter().flat_map(|r| r.best.clone()).collect(),
        matches: rows.iter().map(|r| r.matches).sum::<usize>() / rows.len(),
    };
    rows.push(all);

    // An upsert (a new revision of an existing product), then a search that must see it.
    let revised: Vec<_> = (0..updates)
        .map(|u| {
            let i = rng.random_range(0..entries.len());
            let mut d = entries[i].entry().descriptor.clone();
            d.description = format!("{} revised zuzuzu{u}", d.description);
            let key = keys
                .iter()
                .find(|k| &k.public() == entries[i].product().owner())
                .unwrap();
            CatalogEntry {
                product: entries[i].product().clone(),
                revision: 2 + u as u64,
                timestamp_micros: 1_770_000_000_000_000 + u as u64,
                descriptor: d,
                consumes: Vec::new(),
            }
            .sign(key, &Config::default())
            .unwrap()
        })
        .collect();
    let (mut upserts, mut searches, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for (u, entry) in revised.iter().enumerate() {
        let started = Instant::now();
        index.upsert(entry).unwrap();
        let upserted = started.elapsed();
        let found = index.search(&query(&format!("zuzuzu{u}"))).unwrap();
        let total = started.elapsed();
        assert_eq!(found.hits[0].product, entry.product().to_string());
        upserts.push(upserted);
        searches.push(total - upserted);
        both.push(total);
    }
    let mut slowest = upserts.clone();
    slowest.sort_unstable_by(|a, b| b.cmp(a));
    let every = index.commit_threshold();
    slowest.truncate(updates / every);
    let pending = updates % every;
    let update_rows = [
        Latencies {
            what: format!("upsert (every {every}th commits)"),
            samples: upserts,
            best: Vec::new(),
            matches: 0,
        },
        Latencies {
            what: "the upserts that committed".into(),
            samples: slowest,
            best: Vec::new(),
            matches: 0,
        },
        Latencies {
            what: "search for the upserted product".into(),
            samples: searches,
            best: Vec::new(),
            matches: 1,
        },
        Latencies {
            what: "upsert + search".into(),
            samples: both,
            best: Vec::new(),
            matches: 1,
        },
        time_queries(
            &index,
            &format!("one common word, {pending} upserts pending"),
            &common,
            rounds,
        ),
    ];

    println!(
        "discovery over {products} products ({} signing keys; entries built and signed in {signed_s:.1} s)\n",
        KEYS
    );
    println!("| what | value |");
    println!("| --- | ---: |");
    println!(
        "| index build (upsert_many + commit) | {build_s:.2} s ({:.0} products/s) |",
        products as f64 / build_s
    );
    println!(
        "| RSS growth while building | {:.1} MiB ({:.0} bytes/product) |",
        (rss_after.saturating_sub(rss_before)) as f64 / (1 << 20) as f64,
        rss_after.saturating_sub(rss_before) as f64 / products as f64
    );
    println!(
        "| tantivy index size | {:.1} MiB ({:.0} bytes/product) |",
        index_bytes as f64 / (1 << 20) as f64,
        index_bytes as f64 / products as f64
    );
    println!(
        "| RSS after build | {:.1} MiB |\n",
        rss_after as f64 / (1 << 20) as f64
    );
    println!(
        "| query | samples | mean matches | p50 ms | p95 ms | p99 ms | max ms | best-of-{rounds} p50 ms | best-of-{rounds} p95 ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let cell = |samples: &[Duration], q: f64| {
        if samples.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.3}", quantile_ms(samples, q))
        }
    };
    for r in rows.iter().chain(&update_rows) {
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
            r.what,
            r.samples.len(),
            r.matches,
            r.ms(0.50),
            r.ms(0.95),
            r.ms(0.99),
            r.ms(1.0),
            cell(&r.best, 0.50),
            cell(&r.best, 0.95),
        );
    }
    println!(
        "\nload average while measuring: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
