#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_protocol::{CatalogEntry, Config, Descriptor, ProductName, PublicKey, SecretKey};

use super::*;

/// The owner node of a test product: any 32 bytes make a key that prints and orders.
fn node_key(node: u8) -> PublicKey {
    SecretKey::from_bytes(&[node + 1; 32]).public()
}

fn id(name: &str) -> ProductId {
    // Products of one test live on a few nodes, chosen by the first letter.
    let node = name.as_bytes()[0] % 3;
    ProductId::new(node_key(node), ProductName::new(name).unwrap())
}

fn product(name: &str, declared: &[&str], observed: &[&str]) -> ProductInfo {
    ProductInfo {
        id: id(name),
        domain: format!("domain-{}", &name[..1]),
        owner: format!("team-{}", &name[..1]),
        declared_inputs: declared.iter().map(|n| id(n)).collect(),
        observed_inputs: observed.iter().map(|n| id(n)).collect(),
        updated_micros: 1_000,
    }
}

fn edge(from: &str, to: &str, declared: bool, observed: bool) -> LineageEdge {
    LineageEdge {
        from: id(from),
        to: id(to),
        declared,
        observed,
    }
}

fn sorted_edges(mut edges: Vec<LineageEdge>) -> Vec<LineageEdge> {
    edges.sort();
    edges
}

fn hops(lineage: &Lineage) -> Vec<(String, u32)> {
    lineage
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.hops))
        .collect()
}

fn names(mut pairs: Vec<(String, u32)>) -> Vec<(String, u32)> {
    pairs.sort();
    pairs
}

fn pairs(list: &[(&str, u32)]) -> Vec<(String, u32)> {
    names(list.iter().map(|(n, h)| (n.to_string(), *h)).collect())
}

/// raw -> clean -> report, raw -> report (declared only), clean -> dash (observed only),
/// crm -> clean (both).
fn mesh() -> LineageGraph {
    LineageGraph::build([
        product("raw", &[], &[]),
        product("crm", &[], &[]),
        product("clean", &["raw", "crm"], &["raw", "crm"]),
        product("report", &["clean", "raw"], &["clean"]),
        product("dash", &[], &["clean"]),
    ])
}

#[test]
fn edges_carry_declared_observed_or_both() {
    let graph = mesh();
    assert_eq!(graph.product_count(), 5);
    assert_eq!(graph.missing_count(), 0);
    assert_eq!(
        graph.edge_count(),
        5,
        "declared and observed share one edge"
    );
    let lineage = graph.walk(&id("report"), Direction::Upstream, 5).unwrap();
    assert_eq!(
        lineage.edges,
        sorted_edges(vec![
            edge("clean", "report", true, true),
            edge("raw", "report", true, false),
            edge("raw", "clean", true, true),
            edge("crm", "clean", true, true),
        ])
    );
    let dash = graph.walk(&id("dash"), Direction::Upstream, 1).unwrap();
    assert_eq!(dash.edges, vec![edge("clean", "dash", false, true)]);
    assert_eq!(dash.edges[0].kind(), EdgeKind::ObservedOnly);
    assert_eq!(
        edge("raw", "report", true, false).kind(),
        EdgeKind::DeclaredOnly
    );
}

#[test]
fn upstream_walk_counts_fewest_hops_and_stops_at_depth() {
    let graph = mesh();
    let full = graph.walk(&id("report"), Direction::Upstream, 10).unwrap();
    // raw is one hop away directly and two through clean: the fewer counts.
    assert_eq!(
        names(hops(&full)),
        pairs(&[("report", 0), ("clean", 1), ("raw", 1), ("crm", 2)])
    );
    assert_eq!(full.nodes[0].product, id("report"), "the root comes first");
    assert_eq!((full.direction, full.depth), (Direction::Upstream, 10));

    let one = graph.walk(&id("report"), Direction::Upstream, 1).unwrap();
    assert_eq!(
        names(hops(&one)),
        pairs(&[("report", 0), ("clean", 1), ("raw", 1)])
    );
    // Edges out of the last hop are not followed.
    assert!(one.edges.iter().all(|e| e.to == id("report")), "{one:?}");

    let zero = graph.walk(&id("report"), Direction::Upstream, 0).unwrap();
    assert_eq!(hops(&zero), pairs(&[("report", 0)]));
    assert!(zero.edges.is_empty());
}

#[test]
fn downstream_walk_follows_consumers() {
    let graph = mesh();
    let lineage = graph.walk(&id("raw"), Direction::Downstream, 10).unwrap();
    assert_eq!(
        names(hops(&lineage)),
        pairs(&[("raw", 0), ("clean", 1), ("report", 1), ("dash", 2)])
    );
    assert_eq!(
        lineage.edges,
        sorted_edges(vec![
            edge("raw", "clean", true, true),
            edge("raw", "report", true, false),
            edge("clean", "report", true, true),
            edge("clean", "dash", false, true),
        ])
    );
    let one = graph.walk(&id("crm"), Direction::Downstream, 1).unwrap();
    assert_eq!(names(hops(&one)), pairs(&[("crm", 0), ("clean", 1)]));
    // A source has nothing upstream.
    let up = graph.walk(&id("raw"), Direction::Upstream, 10).unwrap();
    assert_eq!(hops(&up), pairs(&[("raw", 0)]));
}

#[test]
fn walk_nodes_describe_the_products() {
    let graph = mesh();
    let lineage = graph.walk(&id("clean"), Direction::Upstream, 1).unwrap();
    let raw = lineage.nodes.iter().find(|n| n.name == "raw").unwrap();
    assert_eq!(raw.product, id("raw"));
    assert_eq!(raw.domain.as_deref(), Some("domain-r"));
    assert_eq!(raw.owner.as_deref(), Some("team-r"));
    assert_eq!(raw.owner_key, *id("raw").owner());
    assert_eq!(raw.updated_micros, Some(1_000));
    assert!(!raw.missing);
}

#[test]
fn unknown_products_are_a_clear_error() {
    let graph = mesh();
    let err = graph
        .walk(&id("nowhere"), Direction::Upstream, 3)
        .unwrap_err();
    assert_eq!(
        err,
        LineageError::UnknownProduct {
            product: id("nowhere")
        }
    );
    assert!(err.to_string().contains("nowhere@"), "{err}");
    assert!(graph.impact(&id("nowhere"), 3).is_err());
    assert!(
        graph
            .reach_count(&id("nowhere"), Direction::Upstream, 3)
            .is_err()
    );
    assert!(!graph.contains(&id("nowhere")));
}

#[test]
fn impact_lists_downstream_products_and_owners() {
    // One source feeding two domains; `rollup` depends on both branches.
    let graph = LineageGraph::build([
        product("orders", &[], &[]),
        product("refunds", &["orders"], &[]),
        product("revenue", &["orders"], &["orders"]),
        product("rollup", &["refunds", "revenue"], &[]),
        product("unrelated", &[], &[]),
    ]);
    let impact = graph.impact(&id("orders"), 10).unwrap();
    let affected: Vec<(String, String, u32)> = impact
        .affected
        .iter()
        .map(|a| (a.product.name().to_string(), a.owner.clone(), a.hops))
        .collect();
    let mut expected = vec![
        ("refunds".to_string(), "team-r".to_string(), 1),
        ("revenue".to_string(), "team-r".to_string(), 1),
    ];
    expected.sort_by_key(|a| id(&a.0));
    expected.push(("rollup".to_string(), "team-r".to_string(), 2));
    assert_eq!(affected, expected, "sorted by hops, then product id");
    assert!(impact.affected.iter().all(|a| a.domain == "domain-r"));
    assert_eq!(
        impact.affected[0].owner_key,
        *impact.affected[0].product.owner()
    );
    assert_eq!(
        impact.owners,
        vec![OwnerImpact {
            owner: "team-r".into(),
            products: 3,
            nearest_hops: 1
        }]
    );

    let near = graph.impact(&id("orders"), 1).unwrap();
    assert_eq!(near.affected.len(), 2);
    assert!(graph.impact(&id("rollup"), 5).unwrap().affected.is_empty());
}

#[test]
fn impact_groups_owners_most_affected_first() {
    let graph = LineageGraph::build([
        product("src", &[], &[]),
        product("a1", &["src"], &[]),
        product("a2", &["a1"], &[]),
        product("b1", &["a1"], &[]),
    ]);
    let impact = graph.impact(&id("src"), 5).unwrap();
    assert_eq!(
        impact.owners,
        vec![
            OwnerImpact {
                owner: "team-a".into(),
                products: 2,
                nearest_hops: 1
            },
            OwnerImpact {
                owner: "team-b".into(),
                products: 1,
                nearest_hops: 2
            },
        ]
    );
}

#[test]
fn missing_inputs_are_vertices_and_reported() {
    let graph = LineageGraph::build([
        product("report", &["ghost"], &["phantom", "clean"]),
        product("clean", &["ghost"], &["ghost"]),
    ]);
    assert_eq!(graph.product_count(), 2);
    assert_eq!(graph.missing_count(), 2);
    let lineage = graph.walk(&id("report"), Direction::Upstream, 5).unwrap();
    let ghost = lineage.nodes.iter().find(|n| n.name == "ghost").unwrap();
    assert!(ghost.missing);
    assert_eq!(ghost.domain, None);
    assert_eq!(ghost.owner, None);
    assert_eq!(ghost.owner_key, *id("ghost").owner(), "known from the id");
    assert_eq!(ghost.hops, 1);

    // A missing product can be walked: who depends on it?
    let down = graph.walk(&id("ghost"), Direction::Downstream, 5).unwrap();
    assert_eq!(
        names(hops(&down)),
        pairs(&[("ghost", 0), ("clean", 1), ("report", 1)])
    );

    let health = graph.health();
    let mut expected = vec![
        MissingInput {
            product: id("clean"),
            input: id("ghost"),
            declared: true,
            observed: true,
        },
        MissingInput {
            product: id("report"),
            input: id("ghost"),
            declared: true,
            observed: false,
        },
        MissingInput {
            product: id("report"),
            input: id("phantom"),
            declared: false,
            observed: true,
        },
    ];
    expected.sort();
    assert_eq!(health.missing_inputs, expected);
    assert_eq!(health.totals.missing_inputs, 3);
    assert!(!health.is_healthy());
}

#[test]
fn cycles_are_detected_and_walks_terminate() {
    let graph = LineageGraph::build([
        product("a", &["c"], &[]),
        product("b", &["a"], &[]),
        product("c", &["b"], &[]),
        product("d", &["c"], &[]),
        // A product observed consuming itself is a cycle of one.
        product("e", &[], &["e"]),
    ]);
    let health = graph.health();
    let mut abc = vec![id("a"), id("b"), id("c")];
    abc.sort();
    let mut expected = vec![abc, vec![id("e")]];
    expected.sort();
    assert_eq!(health.cycles, expected);
    assert_eq!(health.totals.cycles, 2);

    let up = graph.walk(&id("d"), Direction::Upstream, 100).unwrap();
    assert_eq!(
        names(hops(&up)),
        pairs(&[("d", 0), ("c", 1), ("b", 2), ("a", 3)])
    );
    // Every edge of the cycle is listed once.
    assert_eq!(up.edges.len(), 4);
    let down = graph
        .walk(&id("a"), Direction::Downstream, u32::MAX)
        .unwrap();
    assert_eq!(
        names(hops(&down)),
        pairs(&[("a", 0), ("b", 1), ("c", 2), ("d", 3)])
    );
    let own = graph.walk(&id("e"), Direction::Upstream, 3).unwrap();
    assert_eq!(hops(&own), pairs(&[("e", 0)]));
    assert_eq!(own.edges, vec![edge("e", "e", false, true)]);
}

#[test]
fn a_long_chain_neither_overflows_the_stack_nor_hides_its_cycle() {
    // Debug builds use large frames: a recursive search would overflow at this length.
    let n = 100_000;
    let name = |i: usize| format!("p{i}");
    let owner = node_key(9);
    let pid = |i: usize| ProductId::new(owner, ProductName::new(name(i)).unwrap());
    let products = (0..n).map(|i| ProductInfo {
        id: pid(i),
        domain: "chain".into(),
        owner: "chain".into(),
        // p0 depends on the last product, closing one long cycle.
        declared_inputs: vec![pid((i + n - 1) % n)],
        observed_inputs: vec![],
        updated_micros: 0,
    });
    let graph = LineageGraph::build(products);
    let health = graph.health();
    assert_eq!(health.cycles.len(), 1);
    assert_eq!(health.cycles[0].len(), n);
    assert_eq!(
        graph
            .reach_count(&pid(0), Direction::Downstream, u32::MAX)
            .unwrap(),
        n
    );
}

#[test]
fn health_compares_declared_with_observed() {
    let graph = mesh();
    let health = graph.health();
    assert!(health.missing_inputs.is_empty());
    assert!(health.cycles.is_empty());
    assert_eq!(
        health.undeclared_consumption,
        vec![edge("clean", "dash", false, true)]
    );
    assert_eq!(
        health.declared_not_consumed,
        vec![edge("raw", "report", true, false)]
    );
    let healthy = LineageGraph::build([product("x", &[], &[]), product("y", &["x"], &["x"])]);
    assert!(healthy.health().is_healthy());
}

#[test]
fn truncated_health_keeps_the_totals() {
    let graph = LineageGraph::build([product("a", &["m1", "m2", "m3"], &[])]);
    let mut health = graph.health();
    health.truncate(1);
    assert_eq!(health.missing_inputs.len(), 1);
    assert_eq!(health.totals.missing_inputs, 3);
    assert_eq!(health.totals.declared_not_consumed, 3);
    assert_eq!(health.declared_not_consumed.len(), 1);
}

#[test]
fn output_does_not_depend_on_input_order_or_duplicates() {
    let products = vec![
        product("raw", &[], &[]),
        product("crm", &[], &[]),
        product("clean", &["raw", "crm", "gone"], &["raw", "crm"]),
        product("report", &["clean", "raw"], &["clean"]),
        product("dash", &[], &["clean"]),
    ];
    let mut reversed = products.clone();
    reversed.reverse();
    // An older duplicate of `dash` with other inputs loses to the newer entry.
    let mut stale = product("dash", &["raw"], &[]);
    stale.updated_micros = 1;
    reversed.insert(2, stale);

    let a = LineageGraph::build(products);
    let b = LineageGraph::build(reversed);
    for (root, direction) in [
        ("raw", Direction::Downstream),
        ("dash", Direction::Upstream),
        ("report", Direction::Upstream),
    ] {
        let la = a.walk(&id(root), direction, 10).unwrap();
        let lb = b.walk(&id(root), direction, 10).unwrap();
        for format in [Format::Json, Format::Dot, Format::Mermaid] {
            assert_eq!(la.render(format), lb.render(format), "{root} {format}");
        }
    }
    assert_eq!(a.health(), b.health());
    assert_eq!(
        a.impact(&id("raw"), 10).unwrap(),
        b.impact(&id("raw"), 10).unwrap()
    );
}

#[test]
fn walk_results_are_sorted() {
    let graph = mesh();
    let lineage = graph.walk(&id("raw"), Direction::Downstream, 10).unwrap();
    let keys: Vec<(u32, &ProductId)> = lineage.nodes.iter().map(|n| (n.hops, &n.product)).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    assert!(lineage.edges.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn json_round_trips() {
    let graph = LineageGraph::build([product("report", &["ghost"], &[])]);
    let lineage = graph.walk(&id("report"), Direction::Upstream, 2).unwrap();
    let json = lineage.to_json();
    assert!(json.contains("\"direction\": \"upstream\""), "{json}");
    assert!(json.contains(&format!("\"root\": \"{}\"", id("report"))));
    let back: Lineage = serde_json::from_str(&json).unwrap();
    assert_eq!(back, lineage);

    let impact = graph.impact(&id("ghost"), 2).unwrap();
    let back: Impact = serde_json::from_str(&serde_json::to_string(&impact).unwrap()).unwrap();
    assert_eq!(back, impact);
    let health = graph.health();
    let back: LineageHealth =
        serde_json::from_str(&serde_json::to_string(&health).unwrap()).unwrap();
    assert_eq!(back, health);
}

/// The DOT id of the product called `name` in `lineage`.
fn dot_id(lineage: &Lineage, name: &str) -> String {
    let i = lineage.nodes.iter().position(|n| n.name == name).unwrap();
    format!("n{i}")
}

#[test]
fn dot_marks_edge_evidence_and_missing_products() {
    let graph = LineageGraph::build([
        product("raw", &[], &[]),
        product("clean", &["raw", "ghost"], &["raw"]),
        product("report", &["clean"], &[]),
        product("dash", &[], &["clean"]),
    ]);
    let lineage = graph.walk(&id("clean"), Direction::Downstream, 2).unwrap();
    let dot = lineage.to_dot();
    let n = |name| dot_id(&lineage, name);
    assert!(dot.contains("digraph lineage {"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
    assert!(dot.contains(&format!(
        "  {} -> {} [style=dashed, label=\"declared\"];",
        n("clean"),
        n("report")
    )));
    assert!(dot.contains(&format!(
        "  {} -> {} [style=bold, color=\"#1f6feb\", fontcolor=\"#1f6feb\", label=\"observed\"];",
        n("clean"),
        n("dash")
    )));
    assert!(
        dot.contains("solid: declared and observed"),
        "a visible legend"
    );
    assert!(dot.contains(&format!("  {} [label=\"clean\\n", n("clean"))));
    assert!(dot.contains("penwidth=2.5"), "the root stands out");

    let up = graph.walk(&id("clean"), Direction::Upstream, 1).unwrap();
    let dot = up.to_dot();
    let n = |name| dot_id(&up, name);
    // Declared and observed: the default, solid style.
    assert!(
        dot.contains(&format!("  {} -> {};", n("raw"), n("clean"))),
        "{dot}"
    );
    let ghost_line = dot
        .lines()
        .find(|l| l.starts_with(&format!("  {} [", n("ghost"))))
        .unwrap();
    assert!(ghost_line.contains("dashed"), "{ghost_line}");
    assert!(ghost_line.contains("missing"), "{ghost_line}");
}

#[test]
fn drawings_escape_free_text_and_use_safe_ids() {
    let mut odd = product("odd", &[], &[]);
    odd.domain = "say \"hi\" \\ <b>#1</b> [x] {y} |z|\nnext".into();
    odd.owner = "`ops`@example.com; end".into();
    let graph = LineageGraph::build([odd, product("user", &["odd"], &["odd"])]);
    let lineage = graph.walk(&id("user"), Direction::Upstream, 1).unwrap();

    let dot = lineage.to_dot();
    assert!(
        dot.contains(r#"say \"hi\" \\ <b>#1</b> [x] {y} |z|\nnext"#),
        "{dot}"
    );
    // Inside every label, quotes are escaped: count unescaped quotes per line, always even.
    for line in dot.lines() {
        let unescaped = line
            .char_indices()
            .filter(|&(i, c)| c == '"' && !line[..i].ends_with('\\'))
            .count();
        assert_eq!(unescaped % 2, 0, "{line}");
        // Node statements use generated ids, never raw product ids.
        if line.starts_with("  n") && !line.starts_with("  node ") {
            assert!(
                line.split_whitespace().next().unwrap()[1..]
                    .chars()
                    .all(|c| c.is_ascii_digit())
            );
        }
    }

    let mermaid = lineage.to_mermaid();
    let label_line = mermaid
        .lines()
        .find(|l| l.contains("odd<br/>"))
        .unwrap()
        .trim();
    // One quoted label, nothing that ends it early or starts markup.
    let inner = label_line
        .strip_prefix(&format!("{}[\"", dot_id(&lineage, "odd")))
        .and_then(|rest| rest.strip_suffix("\"]"))
        .unwrap_or_else(|| panic!("{label_line}"));
    for bad in ['"', '<', '>', '[', ']', '{', '}', '|', '`', '\n', '@', ';'] {
        let without_markup = inner.replace("<br/>", "");
        let without_entities: String = {
            // Entity codes are `#digits;`.
            let mut out = String::new();
            let mut rest = without_markup.as_str();
            while let Some(start) = rest.find('#') {
                out.push_str(&rest[..start]);
                let after = &rest[start + 1..];
                let end = after.find(';').unwrap();
                assert!(after[..end].chars().all(|c| c.is_ascii_digit()));
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            out
        };
        assert!(!without_entities.contains(bad), "{bad:?} in {inner}");
    }
    assert!(inner.contains("#34;hi#34;"), "{inner}");
}

#[test]
fn mermaid_marks_edge_evidence_and_missing_products() {
    let graph = LineageGraph::build([
        product("raw", &[], &[]),
        product("clean", &["raw", "ghost"], &["raw"]),
        product("report", &["clean"], &[]),
        product("dash", &[], &["clean"]),
    ]);
    let down = graph.walk(&id("clean"), Direction::Downstream, 2).unwrap();
    let mermaid = down.to_mermaid();
    let n = |name| dot_id(&down, name);
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    assert!(mermaid.contains(&format!(
        "  {} -.->|declared| {}\n",
        n("clean"),
        n("report")
    )));
    assert!(mermaid.contains(&format!("  {} ==>|observed| {}\n", n("clean"), n("dash"))));
    assert!(
        mermaid.contains("linkStyle "),
        "observed-only links coloured"
    );
    assert!(mermaid.contains(&format!("  class {} root\n", n("clean"))));
    assert!(mermaid.contains("legend[\"solid: declared and observed"));

    let up = graph.walk(&id("clean"), Direction::Upstream, 1).unwrap();
    let mermaid = up.to_mermaid();
    let n = |name| dot_id(&up, name);
    assert!(
        mermaid.contains(&format!("  {} --> {}\n", n("raw"), n("clean"))),
        "{mermaid}"
    );
    assert!(mermaid.contains(&format!("  class {} missing\n", n("ghost"))));
    assert!(mermaid.contains("classDef missing "));
    assert!(!mermaid.contains("linkStyle"), "no observed-only link here");
}

#[test]
fn render_formats_parse_and_end_with_a_newline() {
    let lineage = mesh().walk(&id("report"), Direction::Upstream, 2).unwrap();
    for text in ["json", "dot", "mermaid"] {
        let format: Format = text.parse().unwrap();
        assert_eq!(format.to_string(), text);
        assert!(lineage.render(format).ends_with('\n'));
    }
    assert!(matches!(
        "svg".parse::<Format>(),
        Err(LineageError::UnknownFormat { .. })
    ));
    assert_eq!("upstream".parse::<Direction>(), Ok(Direction::Upstream));
    assert_eq!("downstream".parse::<Direction>(), Ok(Direction::Downstream));
    assert!("sideways".parse::<Direction>().is_err());
}

#[test]
fn reach_count_matches_the_walk() {
    let graph = mesh();
    for depth in 0..4 {
        let walk = graph
            .walk(&id("raw"), Direction::Downstream, depth)
            .unwrap();
        let count = graph
            .reach_count(&id("raw"), Direction::Downstream, depth)
            .unwrap();
        assert_eq!(count, walk.nodes.len(), "depth {depth}");
    }
}

#[test]
fn from_catalog_reads_declared_inputs_and_consumes() {
    let config = Config::default();
    let sales = SecretKey::from_bytes(&[1; 32]);
    let finance = SecretKey::from_bytes(&[2; 32]);
    let orders = ProductId::new(sales.public(), ProductName::new("orders").unwrap());
    let customers = ProductId::new(sales.public(), ProductName::new("customers").unwrap());
    let revenue = ProductId::new(finance.public(), ProductName::new("revenue").unwrap());
    let entry = |key: &SecretKey, product: &ProductId, inputs: &[&ProductId], consumes| {
        let inputs: String = inputs.iter().map(|p| format!("\n  - {p}")).collect();
        let yaml = format!(
            "name: {}\ndomain: d-{}\nowner: team-{}\ndescription: x\nversion: 1.0.0\n\
             schema:\n  fields:\n    - name: id\n      type: string\ninputs:{}\n",
            product.name(),
            product.name(),
            product.name(),
            if inputs.is_empty() { " []" } else { &inputs },
        );
        CatalogEntry {
            product: product.clone(),
            revision: 1,
            timestamp_micros: 42,
            descriptor: Descriptor::from_yaml(&yaml, &config).unwrap(),
            consumes,
        }
        .sign(key, &config)
        .unwrap()
    };
    let entries = vec![
        entry(&sales, &orders, &[], vec![]),
        entry(&sales, &customers, &[], vec![]),
        entry(&finance, &revenue, &[&orders], {
            let mut c = vec![orders.clone(), customers.clone()];
            c.sort();
            c
        }),
    ];
    let graph = LineageGraph::from_catalog(&entries);
    let lineage = graph.walk(&revenue, Direction::Upstream, 1).unwrap();
    let mut expected = vec![
        LineageEdge {
            from: orders.clone(),
            to: revenue.clone(),
            declared: true,
            observed: true,
        },
        LineageEdge {
            from: customers.clone(),
            to: revenue.clone(),
            declared: false,
            observed: true,
        },
    ];
    expected.sort();
    assert_eq!(lineage.edges, expected);
    let root = &lineage.nodes[0];
    assert_eq!(root.domain.as_deref(), Some("d-revenue"));
    assert_eq!(root.owner.as_deref(), Some("team-revenue"));
    assert_eq!(root.owner_key, finance.public());
    assert_eq!(root.updated_micros, Some(42));
}

#[test]
fn json_prints_what_derived_serialize_would() {
    let graph = LineageGraph::build([
        product("raw", &[], &[]),
        product("clean", &["raw", "ghost"], &["raw"]),
        product("report", &["clean"], &[]),
    ]);
    let mut lineage = graph.walk(&id("report"), Direction::Upstream, 3).unwrap();
    // A hand-made node whose key is not its product's owner still prints its own key.
    lineage.nodes[1].owner_key = node_key(7);
    let compact = serde_json::to_string(&lineage).unwrap();
    let value: serde_json::Value = serde_json::from_str(&compact).unwrap();
    assert_eq!(value.as_object().unwrap().len(), 5);
    assert_eq!(value["root"], serde_json::json!(id("report").to_string()));
    assert_eq!(value["direction"], "upstream");
    assert_eq!(value["depth"], 3);
    // Field for field and in order: each derived element appears verbatim.
    for node in &lineage.nodes {
        assert!(
            compact.contains(&serde_json::to_string(node).unwrap()),
            "{compact}"
        );
    }
    for edge in &lineage.edges {
        assert!(
            compact.contains(&serde_json::to_string(edge).unwrap()),
            "{compact}"
        );
    }
    assert_eq!(value["nodes"][1]["owner_key"], node_key(7).to_string());
    assert!(compact.starts_with("{\"root\":"), "{compact}");
    assert!(compact.contains(",\"direction\":\"upstream\",\"depth\":3,\"nodes\":["));

    let impact = graph.impact(&id("raw"), 3).unwrap();
    let value = serde_json::to_value(&impact).unwrap();
    let first = &value["affected"][0];
    let affected = &impact.affected[0];
    assert_eq!(
        first,
        &serde_json::json!({
            "product": affected.product.to_string(),
            "domain": affected.domain,
            "owner": affected.owner,
            "owner_key": affected.owner_key.to_string(),
            "hops": affected.hops,
        })
    );
}
