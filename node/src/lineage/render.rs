//! A [`Lineage`] as JSON, Graphviz DOT or Mermaid text, and the JSON form of the results.
//!
//! Both drawings show the evidence for each edge in the same way: a solid line when the input is
//! declared and observed, dashed and labelled `declared` when it is only declared, thick, blue
//! and labelled `observed` when it is only observed. Missing products are red dashed boxes; the
//! walk's root has a thick border. Node ids in the drawings are `n0`, `n1`, ... in the order of
//! [`Lineage::nodes`], because product ids contain characters (`@`, `.`) that neither language
//! accepts in an id; every label is escaped, since domains and owners are free text.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::str::FromStr;

use mesh_protocol::ProductId;
use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};

use super::{Affected, EdgeKind, Lineage, LineageError, LineageNode, truncate_for_error};

/// An output format for [`Lineage::render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Dot,
    Mermaid,
}

impl Format {
    pub fn as_str(&self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Dot => "dot",
            Format::Mermaid => "mermaid",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = LineageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Format::Json),
            "dot" => Ok(Format::Dot),
            "mermaid" => Ok(Format::Mermaid),
            _ => Err(LineageError::UnknownFormat {
                input: truncate_for_error(s),
            }),
        }
    }
}

const LEGEND: &str = "solid: declared and observed · dashed: declared only · \
                      thick blue: observed only · red dashed box: missing product";
const MISSING_COLOR: &str = "#c0392b";
const MISSING_FILL: &str = "#fdecea";
const OBSERVED_COLOR: &str = "#1f6feb";

impl Lineage {
    /// The lineage in `format`, ending with a newline.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => {
                let mut json = self.to_json();
                json.push('\n');
                json
            }
            Format::Dot => self.to_dot(),
            Format::Mermaid => self.to_mermaid(),
        }
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Cannot fail: every map key is a string and every value serializes infallibly
        // (ids through `Display`).
        #[allow(clippy::expect_used)]
        serde_json::to_string_pretty(self).expect("lineage serializes to JSON")
    }

    /// A Graphviz `digraph`, e.g. for `dot -Tsvg`.
    pub fn to_dot(&self) -> String {
        // `write!` to a `String` cannot fail; the results are ignored for that reason.
        let mut out = String::new();
        let _ = writeln!(
            out,
            "// Lineage of {} ({}, {} hops). {LEGEND}.",
            self.root, self.direction, self.depth
        );
        out.push_str("digraph lineage {\n");
        let _ = writeln!(
            out,
            "  graph [rankdir=LR, fontname=\"Helvetica\", fontsize=10, labelloc=b, label=\"{}\"];",
            dot_escape(LEGEND)
        );
        out.push_str("  node [shape=box, style=rounded, fontname=\"Helvetica\", fontsize=11];\n");
        out.push_str("  edge [fontname=\"Helvetica\", fontsize=9];\n");
        for (i, node) in self.nodes.iter().enumerate() {
            let label = label_lines(node)
                .iter()
                .map(|line| dot_escape(line))
                .collect::<Vec<_>>()
                .join("\\n");
            let _ = write!(
                out,
                "  n{i} [label=\"{label}\", tooltip=\"{}\"",
                dot_escape(&node.product.to_string())
            );
            if node.missing {
                let _ = write!(
                    out,
                    ", style=\"rounded,dashed,filled\", color=\"{MISSING_COLOR}\", \
                     fillcolor=\"{MISSING_FILL}\", fontcolor=\"{MISSING_COLOR}\""
                );
            }
            if node.product == self.root {
                out.push_str(", penwidth=2.5");
            }
            out.push_str("];\n");
        }
        for (from, to, kind) in self.numbered_edges() {
            let style = match kind {
                EdgeKind::Both => String::new(),
                EdgeKind::DeclaredOnly => " [style=dashed, label=\"declared\"]".to_owned(),
                EdgeKind::ObservedOnly => format!(
                    " [style=bold, color=\"{OBSERVED_COLOR}\", fontcolor=\"{OBSERVED_COLOR}\", \
                     label=\"observed\"]"
                ),
            };
            let _ = writeln!(out, "  n{from} -> n{to}{style};");
        }
        out.push_str("}\n");
        out
    }

    /// A Mermaid `flowchart LR`, e.g. for a Markdown page.
    pub fn to_mermaid(&self) -> String {
        // `write!` to a `String` cannot fail; the results are ignored for that reason.
        let mut out = String::from("flowchart LR\n");
        let _ = writeln!(
            out,
            "  %% Lineage of {} ({}, {} hops).",
            self.root, self.direction, self.depth
        );
        out.push_str(
            "  %% Edges: --> declared and observed; -.-> declared only; ==> observed only.\n",
        );
        for (i, node) in self.nodes.iter().enumerate() {
            let label = label_lines(node)
                .iter()
                .map(|line| mermaid_escape(line))
                .collect::<Vec<_>>()
                .join("<br/>");
            let _ = writeln!(out, "  n{i}[\"{label}\"]");
        }
        for (from, to, kind) in self.numbered_edges() {
            let arrow = match kind {
                EdgeKind::Both => "-->",
                EdgeKind::DeclaredOnly => "-.->|declared|",
                EdgeKind::ObservedOnly => "==>|observed|",
            };
            let _ = writeln!(out, "  n{from} {arrow} n{to}");
        }
        let legend = LEGEND
            .split(" · ")
            .map(mermaid_escape)
            .collect::<Vec<_>>()
            .join("<br/>");
        let _ = writeln!(out, "  legend[\"{legend}\"]");
        let _ = writeln!(
            out,
            "  classDef missing fill:{MISSING_FILL},stroke:{MISSING_COLOR},\
             stroke-dasharray:5 5,color:{MISSING_COLOR}"
        );
        out.push_str("  classDef root stroke-width:3px\n");
        out.push_str("  classDef legendbox fill:#ffffff,stroke:#999999,font-size:11px\n");
        out.push_str("  class legend legendbox\n");
        let missing: Vec<String> = (self.nodes.iter().enumerate())
            .filter(|(_, node)| node.missing)
            .map(|(i, _)| format!("n{i}"))
            .collect();
        if !missing.is_empty() {
            let _ = writeln!(out, "  class {} missing", missing.join(","));
        }
        // Observed-only links in blue: `linkStyle` addresses links by their position.
        let observed: Vec<String> = self
            .numbered_edges()
            .enumerate()
            .filter(|(_, (_, _, kind))| *kind == EdgeKind::ObservedOnly)
            .map(|(position, _)| position.to_string())
            .collect();
        if !observed.is_empty() {
            let _ = writeln!(
                out,
                "  linkStyle {} stroke:{OBSERVED_COLOR},color:{OBSERVED_COLOR}",
                observed.join(",")
            );
        }
        if let Some(root) = self.nodes.iter().position(|n| n.product == self.root) {
            let _ = writeln!(out, "  class n{root} root");
        }
        out
    }

    /// The edges as positions in `nodes`; an edge naming a product not in `nodes` (only possible
    /// in hand-made JSON) is left out rather than drawn to nowhere.
    fn numbered_edges(&self) -> impl Iterator<Item = (usize, usize, EdgeKind)> + '_ {
        let positions: HashMap<&ProductId, usize> = (self.nodes.iter().enumerate())
            .map(|(i, node)| (&node.product, i))
            .collect();
        self.edges.iter().filter_map(move |edge| {
            Some((
                *positions.get(&edge.from)?,
                *positions.get(&edge.to)?,
                edge.kind(),
            ))
        })
    }
}

/// The lines of a product's box: name; domain and owner (or `missing`); owner node, short.
fn label_lines(node: &LineageNode) -> [String; 3] {
    let second = match (&node.domain, &node.owner) {
        _ if node.missing => "missing: no catalog entry".to_owned(),
        (Some(domain), Some(owner)) => format!("{domain} · {owner}"),
        (Some(one), None) | (None, Some(one)) => one.clone(),
        (None, None) => String::new(),
    };
    [
        node.product.name().as_str().to_owned(),
        second,
        format!("node {}", node.owner_key.short()),
    ]
}

/// Text for inside a DOT double-quoted string.
fn dot_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            // A backslash starts an escape (`\n`, `\N`, ...) in DOT labels.
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Text for inside a Mermaid `["..."]` label: everything but letters, digits and a few plain
/// punctuation marks becomes an entity code (`#34;`), so no quote, bracket, `#`, `<` or
/// Markdown mark in a domain or owner can end the label or change its meaning.
fn mermaid_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_alphanumeric() || " .,-_:/+·…".contains(c) {
            out.push(c);
        } else if c.is_control() {
            out.push(' ');
        } else {
            let _ = write!(out, "#{};", u32::from(c));
        }
    }
    out
}

// JSON. A product id prints as `name@PeerId`, and base58 costs about as much as the rest of the
// answer: printing a 3,000-product walk the derived way spends most of its time encoding the
// same keys again. These impls print each reached product's id once and take its owner key
// from the id's text; the output is what `derive(Serialize)` would print, field for field.

/// The text of each reached product's id.
struct IdTexts<'a>(HashMap<&'a ProductId, String>);

impl<'a> IdTexts<'a> {
    fn new(nodes: &'a [LineageNode]) -> Self {
        Self(
            nodes
                .iter()
                .map(|node| (&node.product, node.product.to_string()))
                .collect(),
        )
    }

    fn product(&self, product: &ProductId) -> Cow<'_, str> {
        match self.0.get(product) {
            Some(text) => Cow::Borrowed(text),
            None => Cow::Owned(product.to_string()),
        }
    }

    fn owner_key(&self, node: &LineageNode) -> Cow<'_, str> {
        if node.owner_key == *node.product.owner()
            && let Some((_, key)) = self.0.get(&node.product).and_then(|t| t.split_once('@'))
        {
            return Cow::Borrowed(key);
        }
        Cow::Owned(node.owner_key.to_string())
    }
}

/// [`LineageNode`] with its ids as text.
#[derive(Serialize)]
struct NodeText<'a> {
    product: Cow<'a, str>,
    name: &'a str,
    domain: &'a Option<String>,
    owner: &'a Option<String>,
    owner_key: Cow<'a, str>,
    hops: u32,
    missing: bool,
    updated_micros: Option<u64>,
}

/// [`LineageEdge`](super::LineageEdge) with its ids as text.
#[derive(Serialize)]
struct EdgeText<'a> {
    from: Cow<'a, str>,
    to: Cow<'a, str>,
    declared: bool,
    observed: bool,
}

impl Serialize for Lineage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ids = IdTexts::new(&self.nodes);
        let nodes: Vec<NodeText<'_>> = self
            .nodes
            .iter()
            .map(|node| NodeText {
                product: ids.product(&node.product),
                name: &node.name,
                domain: &node.domain,
                owner: &node.owner,
                owner_key: ids.owner_key(node),
                hops: node.hops,
                missing: node.missing,
                updated_micros: node.updated_micros,
            })
            .collect();
        let edges: Vec<EdgeText<'_>> = self
            .edges
            .iter()
            .map(|edge| EdgeText {
                from: ids.product(&edge.from),
                to: ids.product(&edge.to),
                declared: edge.declared,
                observed: edge.observed,
            })
            .collect();
        let mut out = serializer.serialize_struct("Lineage", 5)?;
        out.serialize_field("root", &ids.product(&self.root))?;
        out.serialize_field("direction", &self.direction)?;
        out.serialize_field("depth", &self.depth)?;
        out.serialize_field("nodes", &nodes)?;
        out.serialize_field("edges", &edges)?;
        out.end()
    }
}

impl Serialize for Affected {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let product = self.product.to_string();
        let owner_key = match product.split_once('@') {
            Some((_, key)) if self.owner_key == *self.product.owner() => Cow::Borrowed(key),
            _ => Cow::Owned(self.owner_key.to_string()),
        };
        let mut out = serializer.serialize_struct("Affected", 5)?;
        out.serialize_field("product", &product)?;
        out.serialize_field("domain", &self.domain)?;
        out.serialize_field("owner", &self.owner)?;
        out.serialize_field("owner_key", &owner_key)?;
        out.serialize_field("hops", &self.hops)?;
        out.end()
    }
}
