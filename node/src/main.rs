//! `meshnode`: the data mesh node's command line, a thin shell over the `mesh_node` library.
//!
//! `init`, `run`, `verify` and `check` work on a node's home directory or files; the other verbs
//! talk to a running node's HTTP API (`--api`, default `127.0.0.1:8080`). Every verb exits
//! non-zero with a one-line reason on failure and prints JSON with `--json`.

mod client;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use mesh_node::api::AppendBody;
use mesh_node::store::SledStore;
use mesh_node::{NodeConfig, NodeOptions, TransportKind};
use mesh_protocol::{Config, Descriptor, ProductId, SecretKey};

use crate::client::Client;

#[derive(Debug, Parser)]
#[command(
    name = "meshnode",
    version,
    about = "A node of a broker-less data mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to print results.
#[derive(Debug, clap::Args)]
struct Output {
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Where a running node's HTTP API is.
#[derive(Debug, clap::Args)]
struct Api {
    /// HOST:PORT of the node's HTTP API.
    #[arg(long, env = "MESHNODE_API", default_value = "127.0.0.1:8080")]
    api: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a node's home: an identity key and a commented node.toml.
    Init {
        #[command(flatten)]
        out: Output,
        #[arg(long)]
        home: PathBuf,
        /// The business domain this node serves, e.g. sales.
        #[arg(long)]
        domain: String,
        /// Address to listen on for peers.
        #[arg(long)]
        listen: Option<Multiaddr>,
        /// HOST:PORT for the HTTP API.
        #[arg(long)]
        api: Option<SocketAddr>,
    },
    /// Run a node until Ctrl-C or SIGTERM.
    Run {
        #[command(flatten)]
        out: Output,
        #[arg(long)]
        home: PathBuf,
        /// Address to listen on for peers (repeatable); replaces node.toml's `listen`.
        #[arg(long)]
        listen: Vec<Multiaddr>,
        /// A peer to connect to at start (repeatable); added to node.toml's `peers`.
        #[arg(long)]
        peer: Vec<Multiaddr>,
        /// HOST:PORT for the HTTP API; replaces node.toml's `api`.
        #[arg(long)]
        api: Option<SocketAddr>,
    },
    /// Publish (create or update) a data product from its descriptor file.
    Publish {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        api: Api,
        file: PathBuf,
    },
    /// Append a change event to one of the node's products.
    Append {
        #[command(flatten)]
        api: Api,
        product: String,
        #[arg(long)]
        key: String,
        /// The record's new value, as JSON. (The receipt is always printed as JSON.)
        #[arg(
            long = "json",
            conflicts_with = "delete",
            required_unless_present = "delete"
        )]
        value: Option<String>,
        /// Upstream event this one was derived from, as PRODUCT#SEQ#EVENT_ID (repeatable).
        #[arg(long)]
        cause: Vec<String>,
        /// Delete the record instead.
        #[arg(long)]
        delete: bool,
    },
    /// Follow a product's log; the node keeps a live replica and resumes after restarts.
    Subscribe {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        api: Api,
        product: String,
    },
    /// Stop following a product (what was received stays).
    Unsubscribe {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        api: Api,
        product: String,
    },
    /// Show a product's log, each event re-verified.
    Events {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        api: Api,
        product: String,
        /// First sequence number to show.
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Get a record from a product's live replica.
    Get {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        api: Api,
        product: String,
        #[arg(long)]
        key: String,
    },
    /// Peers, products, subscriptions and their lag, forks, recent rejections.
    Status {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        api: Api,
    },
    /// List every catalog entry this node holds (see `search` to rank and filter).
    Catalog {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        api: Api,
        /// Only products of this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only products with this tag.
        #[arg(long)]
        tag: Option<String>,
    },
    /// Ranked search of the catalog, at this node (`--api`) or at any peer (`--peer`).
    Search {
        #[command(flatten)]
        out: Output,
        /// Ask this node's HTTP API (default 127.0.0.1:8080).
        #[arg(long, env = "MESHNODE_API", conflicts_with = "peer")]
        api: Option<String>,
        /// Ask the node at this libp2p address over /mesh/search/1, e.g.
        /// /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...
        #[arg(long)]
        peer: Option<Multiaddr>,
        /// Words to look for in names, descriptions, tags, fields, owners and domains. Empty:
        /// every product (filters still apply).
        #[arg(default_value = "")]
        query: String,
        #[arg(long)]
        domain: Option<String>,
        /// The descriptor's owner (team or person), as written in the descriptor.
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// Only products with (true) or without (false) PII fields.
        #[arg(long)]
        pii: Option<bool>,
        /// A semver requirement on the product version, e.g. ^1 or >=2.1.
        #[arg(long)]
        version: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Product-level lineage: what a product is derived from (upstream) or feeds (downstream).
    Lineage {
        #[command(flatten)]
        api: Api,
        product: String,
        /// Walk towards sources (the default).
        #[arg(long, conflicts_with = "downstream")]
        upstream: bool,
        /// Walk towards consumers.
        #[arg(long)]
        downstream: bool,
        /// Hops to walk.
        #[arg(long, default_value_t = 3)]
        depth: u32,
        /// json, dot (Graphviz) or mermaid. Declared-only edges are dashed, observed-only
        /// dotted, edges both declared and observed solid.
        #[arg(long, default_value = "json")]
        format: String,
        /// The same as --format json.
        #[arg(long)]
        json: bool,
    },
    /// Impact analysis: the downstream products and owners a change to PRODUCT affects.
    Impact {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        api: Api,
        product: String,
        #[arg(long, default_value_t = 64)]
        depth: u32,
    },
    /// Follow a record back through the upstream events it was derived from, verifying each.
    Trace {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        api: Api,
        product: String,
        #[arg(long)]
        key: String,
    },
    /// Discovery health: stale owners, missing inputs, lineage cycles, undeclared consumption.
    Health {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        api: Api,
        /// How long an owner may go unseen before it is reported, e.g. 7d or 12h.
        #[arg(long, default_value = "7d")]
        stale_after: String,
    },
    /// Audit a stored log offline: signatures, chain, head and replica. Stop the node first.
    Verify {
        #[command(flatten)]
        out: Output,
        #[arg(long)]
        home: PathBuf,
        product: String,
    },
    /// Check a descriptor file and print it as the mesh will see it.
    Check {
        #[command(flatten)]
        out: Output,
        file: PathBuf,
    },
    /// Start a four-domain mesh on loopback, run it end to end, and stop.
    Demo {
        #[command(flatten)]
        out: Output,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // The demo prints its own tour; keep node logs for problems there.
        // A running node logs what it does; the other verbs print their answer, and logs
        // only for problems (the demo prints its own tour).
        let level = if matches!(cli.command, Command::Run { .. }) {
            "info"
        } else {
            "warn"
        };
        // gossipsub logs an ERROR for every message that races a closing connection, which
        // closing unneeded connections (`peers_wanted`) makes routine.
        tracing_subscriber::EnvFilter::new(format!("{level},libp2p_gossipsub::behaviour=off"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in a log file or a journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the reason and its causes, joined.
            eprintln!("meshnode: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            out,
            home,
            domain,
            listen,
            api,
        } => init(&home, &domain, listen, api, out.json),
        Command::Run {
            out,
            home,
            listen,
            peer,
            api,
        } => runtime()?.block_on(run_node(&home, listen, peer, api, out.json)),
        Command::Publish { out, api, file } => {
            let json = out.json;
            let yaml = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let entry: serde_json::Value =
                Client::new(&api.api)?.post_text("/v1/products", yaml)?;
            print(json, &entry, || {
                format!(
                    "published {} revision {}",
                    entry["product"].as_str().unwrap_or("?"),
                    entry["revision"]
                )
            })
        }
        Command::Append {
            api,
            product,
            key,
            value,
            delete,
            cause,
        } => {
            let product = parse_product(&product)?;
            let value = value
                .map(|v| {
                    serde_json::from_str(&v)
                        .with_context(|| format!("--json-value is not JSON: {v}"))
                })
                .transpose()?;
            let causes = cause
                .iter()
                .map(|c| parse_cause(c))
                .collect::<anyhow::Result<_>>()?;
            let body = AppendBody {
                key,
                value,
                delete,
                causes,
            };
            let receipt: serde_json::Value = Client::new(&api.api)?
                .post_json(&format!("/v1/products/{product}/events"), &body)?;
            print(true, &receipt, String::new)
        }
        Command::Subscribe { out, api, product } => {
            let json = out.json;
            let product = parse_product(&product)?;
            let body = serde_json::json!({ "product": product });
            let reply: serde_json::Value =
                Client::new(&api.api)?.post_json("/v1/subscriptions", &body)?;
            print(json, &reply, || {
                format!(
                    "subscribed to {product}; holding up to seq {}",
                    reply["held_seq"]
                )
            })
        }
        Command::Unsubscribe { out, api, product } => {
            let json = out.json;
            let product = parse_product(&product)?;
            let reply: serde_json::Value =
                Client::new(&api.api)?.delete(&format!("/v1/subscriptions/{product}"))?;
            print(json, &reply, || format!("unsubscribed from {product}"))
        }
        Command::Events {
            out,
            api,
            product,
            from,
            limit,
        } => {
            let json = out.json;
            let product = parse_product(&product)?;
            let events: Vec<serde_json::Value> = Client::new(&api.api)?.get(&format!(
                "/v1/products/{product}/events?from={from}&limit={limit}"
            ))?;
            print(json, &events, || {
                let mut out = format!("{} event(s) of {product}\n", events.len());
                for e in &events {
                    let id = e["id"].as_str().unwrap_or("");
                    out.push_str(&format!(
                        "{:>6}  {}  {:<6} {:<16} {}  [{}]\n",
                        e["seq"],
                        id.get(..12).unwrap_or(id),
                        e["op"].as_str().unwrap_or(""),
                        e["key"].as_str().unwrap_or(""),
                        e["payload"],
                        e["status"].as_str().unwrap_or("")
                    ));
                }
                out.trim_end().to_owned()
            })
        }
        Command::Get {
            out,
            api,
            product,
            key,
        } => {
            let json = out.json;
            let product = parse_product(&product)?;
            let record: serde_json::Value = Client::new(&api.api)?.get(&format!(
                "/v1/products/{product}/record?key={}",
                client::encode_query(&key)
            ))?;
            print(json, &record, || record["value"].to_string())
        }
        Command::Status { out, api } => {
            let json = out.json;
            let status: mesh_node::Status = Client::new(&api.api)?.get("/v1/status")?;
            print(json, &status, || status_text(&status))
        }
        Command::Catalog {
            out,
            api,
            domain,
            tag,
        } => {
            let json = out.json;
            let mut entries: Vec<serde_json::Value> = Client::new(&api.api)?.get("/v1/products")?;
            entries.retain(|e| {
                let d = &e["descriptor"];
                domain.as_ref().is_none_or(|v| d["domain"] == v.as_str())
                    && tag.as_ref().is_none_or(|t| {
                        d["tags"]
                            .as_array()
                            .is_some_and(|tags| tags.iter().any(|x| x == &t.to_lowercase()))
                    })
            });
            print(json, &entries, || {
                let mut out = format!("{} product(s)\n", entries.len());
                for e in &entries {
                    let d = &e["descriptor"];
                    out.push_str(&format!(
                        "{}  {} v{} r{}  {}\n",
                        e["product"].as_str().unwrap_or("?"),
                        d["domain"].as_str().unwrap_or("?"),
                        d["version"].as_str().unwrap_or("?"),
                        e["revision"],
                        d["description"].as_str().unwrap_or("")
                    ));
                }
                out.trim_end().to_owned()
            })
        }
        Command::Search {
            out,
            api,
            peer,
            query,
            domain,
            owner,
            tag,
            pii,
            version,
            limit,
        } => {
            let request = mesh_node::search::SearchRequest {
                query,
                domain,
                owner,
                tag,
                pii,
                version,
                limit,
                offset: 0,
            };
            let response = match peer {
                Some(address) => runtime()?
                    .block_on(mesh_node::discovery::query_address(
                        address.clone(),
                        &request,
                    ))
                    .with_context(|| format!("search at {address}"))?,
                None => {
                    let api = api.unwrap_or_else(|| "127.0.0.1:8080".to_owned());
                    let mut params = vec![format!("q={}", client::encode_query(&request.query))];
                    for (name, value) in [
                        ("domain", &request.domain),
                        ("owner", &request.owner),
                        ("tag", &request.tag),
                        ("version", &request.version),
                    ] {
                        if let Some(v) = value {
                            params.push(format!("{name}={}", client::encode_query(v)));
                        }
                    }
                    if let Some(pii) = request.pii {
                        params.push(format!("pii={pii}"));
                    }
                    params.push(format!("limit={limit}"));
                    Client::new(&api)?.get(&format!("/v1/catalog?{}", params.join("&")))?
                }
            };
            print(out.json, &response, || search_text(&response))
        }
        Command::Lineage {
            api,
            product,
            upstream: _,
            downstream,
            depth,
            format,
            json,
        } => {
            let product = parse_product(&product)?;
            let format = if json { "json".to_owned() } else { format };
            let direction = if downstream { "downstream" } else { "upstream" };
            let path = format!(
                "/v1/lineage/{product}?direction={direction}&depth={depth}&format={}",
                client::encode_query(&format)
            );
            let client = Client::new(&api.api)?;
            if format == "json" {
                let value: serde_json::Value = client.get(&path)?;
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", client.get_text(&path)?);
            }
            Ok(())
        }
        Command::Impact {
            out,
            api,
            product,
            depth,
        } => {
            let product = parse_product(&product)?;
            let impact: mesh_node::lineage::Impact =
                Client::new(&api.api)?.get(&format!("/v1/impact/{product}?depth={depth}"))?;
            print(out.json, &impact, || impact_text(&impact))
        }
        Command::Trace {
            out,
            api,
            product,
            key,
        } => {
            let product = parse_product(&product)?;
            let trace: mesh_node::trace::Trace = Client::new(&api.api)?.get(&format!(
                "/v1/trace/{product}?key={}",
                client::encode_query(&key)
            ))?;
            print(out.json, &trace, || trace_text(&trace))
        }
        Command::Health {
            out,
            api,
            stale_after,
        } => {
            let report: mesh_node::discovery::DiscoveryHealth =
                Client::new(&api.api)?.get(&format!(
                    "/v1/health?stale_after={}",
                    client::encode_query(&stale_after)
                ))?;
            print(out.json, &report, || health_text(&report))
        }
        Command::Verify { out, home, product } => verify(&home, &product, out.json),
        Command::Check { out, file } => check(&file, out.json),
        Command::Demo { out } => {
            runtime()?.block_on(mesh_node::demo::run(&mut std::io::stdout(), out.json))
        }
    }
}

fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}

fn search_text(r: &mesh_node::search::SearchResponse) -> String {
    let mut out = format!("{} product(s) match", r.total);
    if r.hits.len() < r.total {
        out.push_str(&format!(", showing {}", r.hits.len()));
    }
    out.push('\n');
    for (i, h) in r.hits.iter().enumerate() {
        out.push_str(&format!(
            "{:>2}. {}  [{}] v{} owner {}{}\n    {}\n    {}\n    holders: {}\n",
            i + 1,
            h.name,
            h.domain,
            h.version,
            h.owner,
            if h.has_pii { "  PII" } else { "" },
            h.description.lines().next().unwrap_or(""),
            h.product,
            h.holders.join(", ")
        ));
    }
    let facet = |name: &str, counts: &[mesh_node::search::FacetCount]| {
        let list: Vec<String> = counts
            .iter()
            .map(|c| format!("{} ({})", c.value, c.count))
            .collect();
        format!("{name}: {}\n", list.join(", "))
    };
    out.push_str(&facet("domains", &r.facets.domain));
    out.push_str(&facet("tags", &r.facets.tag));
    out.trim_end().to_owned()
}

fn impact_text(i: &mesh_node::lineage::Impact) -> String {
    if i.affected.is_empty() {
        return format!(
            "nothing downstream of {} within {} hops",
            i.product, i.depth
        );
    }
    let mut out = format!(
        "a change to {} affects {} product(s):\n",
        i.product,
        i.affected.len()
    );
    for a in &i.affected {
        out.push_str(&format!(
            "  {} hop(s)  {}  [{}] owner {}\n",
            a.hops, a.product, a.domain, a.owner
        ));
    }
    out.push_str("owners to tell:\n");
    for o in &i.owners {
        out.push_str(&format!(
            "  {}: {} product(s), nearest {} hop(s)\n",
            o.owner, o.products, o.nearest_hops
        ));
    }
    out.trim_end().to_owned()
}

fn trace_text(t: &mesh_node::trace::Trace) -> String {
    let mut out = format!("record {:?} of {}\n", t.key, t.product);
    for s in &t.steps {
        out.push_str(&format!(
            "{}{} #{} {}  {}",
            "  ".repeat(s.depth.min(32) as usize + 1),
            s.product,
            s.seq,
            s.id.get(..12).unwrap_or(&s.id),
            s.status
        ));
        if let Some(e) = &s.event {
            out.push_str(&format!("  {} {} = {}", e.op, e.key, e.payload));
        }
        if !s.holders.is_empty() {
            out.push_str(&format!("  (held by {})", s.holders.join(", ")));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "{} source event(s), {} unavailable{}",
        t.sources.len(),
        t.unavailable,
        if t.truncated { ", truncated" } else { "" }
    ));
    out
}

fn health_text(h: &mesh_node::discovery::DiscoveryHealth) -> String {
    let l = &h.lineage;
    let mut out = format!(
        "{} product(s): {}\n",
        h.products,
        if h.is_healthy() {
            "healthy"
        } else {
            "problems found"
        }
    );
    out.push_str(&format!(
        "stale owners (unseen for {} s): {}\n",
        h.stale_after_secs,
        h.stale_owners.len()
    ));
    for s in &h.stale_owners {
        out.push_str(&format!(
            "  {} ({} product(s))\n",
            s.owner_key,
            s.products.len()
        ));
    }
    out.push_str(&format!("missing inputs: {}\n", l.totals.missing_inputs));
    for m in &l.missing_inputs {
        out.push_str(&format!(
            "  {} needs {}, which no entry describes\n",
            m.product, m.input
        ));
    }
    out.push_str(&format!("lineage cycles: {}\n", l.totals.cycles));
    for c in &l.cycles {
        let names: Vec<String> = c.iter().map(ToString::to_string).collect();
        out.push_str(&format!("  {}\n", names.join(" -> ")));
    }
    out.push_str(&format!(
        "consumed but not declared: {}\ndeclared but not consumed: {}",
        l.totals.undeclared_consumption, l.totals.declared_not_consumed
    ));
    out
}

fn parse_product(text: &str) -> anyhow::Result<ProductId> {
    text.parse()
        .with_context(|| format!("invalid product id {text:?}"))
}

/// `PRODUCT#SEQ#EVENT_ID`: an upstream event, as `events --json` shows its parts.
fn parse_cause(text: &str) -> anyhow::Result<mesh_protocol::EventRef> {
    let mut parts = text.split('#');
    let (Some(product), Some(seq), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("--cause {text:?}: expected PRODUCT#SEQ#EVENT_ID");
    };
    Ok(mesh_protocol::EventRef {
        product: parse_product(product)?,
        seq: seq
            .parse()
            .with_context(|| format!("--cause {text:?}: {seq:?} is not a sequence number"))?,
        id: id
            .parse()
            .with_context(|| format!("--cause {text:?}: bad event id"))?,
    })
}

const CONFIG_FILE: &str = "node.toml";
const KEY_FILE: &str = "identity.key";
const DB_DIR: &str = "db";

fn init(
    home: &Path,
    domain: &str,
    listen: Option<Multiaddr>,
    api: Option<SocketAddr>,
    json: bool,
) -> anyhow::Result<()> {
    let key_path = home.join(KEY_FILE);
    if key_path.exists() {
        bail!(
            "{} already holds a node identity; refusing to replace it",
            home.display()
        );
    }
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    let mut config = NodeConfig {
        domain: domain.to_owned(),
        ..NodeConfig::default()
    };
    if let Some(listen) = listen {
        config.listen = vec![listen];
    }
    if let Some(api) = api {
        config.api = api;
    }
    let keypair = libp2p::identity::Keypair::generate_ed25519()
        .try_into_ed25519()
        .context("fresh ed25519 key")?;
    let seed: [u8; 32] = keypair.secret().as_ref()[..32]
        .try_into()
        .context("ed25519 seed")?;
    write_private(&key_path, format!("{}\n", hex::encode(seed)).as_bytes())?;
    std::fs::write(home.join(CONFIG_FILE), config.commented_toml())
        .with_context(|| format!("cannot write {}", home.join(CONFIG_FILE).display()))?;
    let peer_id = SecretKey::from_bytes(&seed).public();
    let summary =
        serde_json::json!({ "home": home, "peer_id": peer_id.to_string(), "domain": domain });
    print(json, &summary, || {
        format!(
            "initialised {} for domain {domain}\npeer id {peer_id}\nrun it with: meshnode run --home {}",
            home.display(),
            home.display()
        )
    })
}

/// Writes a file readable by its owner only (the identity key).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

fn read_key(home: &Path) -> anyhow::Result<SecretKey> {
    let path = home.join(KEY_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (run `meshnode init --home {}` first)",
            path.display(),
            home.display()
        )
    })?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .with_context(|| format!("{} is not a 64-hex-digit key", path.display()))?;
    Ok(SecretKey::from_bytes(&seed))
}

fn open_store(home: &Path) -> anyhow::Result<SledStore> {
    let path = home.join(DB_DIR);
    SledStore::open(&path).map_err(|e| {
        if e.to_string().contains("could not acquire lock") {
            anyhow::anyhow!(
                "{} is in use: is the node running? Stop it first",
                path.display()
            )
        } else {
            anyhow::anyhow!("cannot open {}: {e}", path.display())
        }
    })
}

async fn run_node(
    home: &Path,
    listen: Vec<Multiaddr>,
    peers: Vec<Multiaddr>,
    api: Option<SocketAddr>,
    json: bool,
) -> anyhow::Result<()> {
    let mut config = NodeConfig::load(&home.join(CONFIG_FILE))?;
    if !listen.is_empty() {
        config.listen = listen;
    }
    config.peers.extend(peers);
    if let Some(api) = api {
        config.api = api;
    }
    let key = read_key(home)?;
    let store = Arc::new(open_store(home)?);
    let api_addr = config.api;
    let node = mesh_node::start(NodeOptions {
        config,
        protocol: Config::default(),
        transport: TransportKind::Tcp,
        store,
        key: Some(key),
    })
    .await?;
    let stop_api = tokio_util::sync::CancellationToken::new();
    let (bound, api_task) =
        match mesh_node::api::serve(node.clone(), api_addr, stop_api.clone()).await {
            Ok(served) => served,
            Err(e) => {
                node.shutdown().await;
                return Err(e);
            }
        };
    let started = serde_json::json!({
        "peer_id": node.peer_id().to_string(),
        "domain": node.domain(),
        "listen_addrs": node.listen_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "api": bound.to_string(),
    });
    print(json, &started, || {
        let mut out = format!("node {} ({})\n", node.peer_id(), node.domain());
        for addr in node.listen_addrs() {
            out.push_str(&format!("listening on {addr}\n"));
        }
        out.push_str(&format!("HTTP API on http://{bound}/v1/status"));
        out
    })?;
    // Tell whoever started us (scripts, tests) that the node is ready.
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    wait_for_signal().await;
    tracing::info!("stopping");
    stop_api.cancel();
    let _ = api_task.await;
    node.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn verify(home: &Path, product: &str, json: bool) -> anyhow::Result<()> {
    let product = parse_product(product)?;
    let store = open_store(home)?;
    let report = mesh_node::audit::audit(&store, &product, &Config::default())?;
    print(json, &report, || {
        let mut out = format!(
            "{}: {} events, head seq {}, {} live records, {} fork proof(s)",
            report.product, report.events, report.head_seq, report.records, report.forks
        );
        if report.is_clean() {
            out.push_str("\nevery event verifies and chains; head and replica agree with the log");
        }
        for p in &report.problems {
            out.push_str(&format!("\nseq {}: {}", p.seq, p.problem));
        }
        out
    })?;
    if report.events == 0 {
        bail!("no events of {product} are stored in {}", home.display());
    }
    if !report.is_clean() {
        bail!(
            "{} problem(s) in the stored log of {product}",
            report.problems.len()
        );
    }
    Ok(())
}

fn check(file: &Path, json: bool) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let descriptor = Descriptor::from_yaml(&text, &Config::default()).map_err(|errors| {
        // One line per problem, each prefixed with the file, like a compiler.
        let lines: Vec<String> = errors
            .0
            .iter()
            .map(|e| format!("{}: {e}", file.display()))
            .collect();
        anyhow::anyhow!("{} problem(s)\n{}", lines.len(), lines.join("\n"))
    });
    let descriptor = match descriptor {
        Ok(d) => d,
        Err(e) => {
            // The problems go one per line; keep them, unlike other errors.
            eprintln!("meshnode: {e}");
            std::process::exit(1);
        }
    };
    print(json, &descriptor, || {
        format!(
            "{}: ok — {} {} ({} domain), {} fields{}, {} inputs",
            file.display(),
            descriptor.name,
            descriptor.version,
            descriptor.domain,
            descriptor.fields.len(),
            if descriptor.has_pii() {
                " incl. PII"
            } else {
                ""
            },
            descriptor.inputs.len()
        )
    })
}

fn status_text(s: &mesh_node::Status) -> String {
    let mut out = format!(
        "node {} ({}), up {}s\nlistening: {}\npeers: {}\ncatalog: {} products\n",
        s.peer_id,
        s.domain,
        s.uptime_secs,
        s.listen_addrs.join(", "),
        s.peers.len(),
        s.catalog_entries
    );
    for p in &s.products {
        out.push_str(&format!(
            "own product {} revision {} head seq {}\n",
            p.product, p.revision, p.head_seq
        ));
    }
    for sub in &s.subscriptions {
        out.push_str(&format!(
            "subscribed {} held seq {} lag {} source {}\n",
            sub.product,
            sub.held_seq,
            sub.lag,
            sub.source.as_deref().unwrap_or("(none yet)")
        ));
    }
    for f in &s.forks {
        out.push_str(&format!(
            "FORK {} at seq {}: {} vs {}\n",
            f.product, f.seq, f.first, f.second
        ));
    }
    if s.equivocations > 0 {
        out.push_str(&format!("catalog equivocations: {}\n", s.equivocations));
    }
    for r in &s.recent_rejections {
        out.push_str(&format!(
            "rejected from {} ({}): {} — {}\n",
            r.peer, r.product, r.reason, r.detail
        ));
    }
    out.trim_end().to_owned()
}
