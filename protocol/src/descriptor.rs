//! Data product descriptors: the YAML a domain team writes, checked into a [`Descriptor`].
//!
//! One checking path serves both sources of descriptors. A YAML file is parsed into raw,
//! position-carrying values; a descriptor received on the wire is turned into the same raw
//! values with an unknown position. Both then go through the same checks, so a
//! descriptor that one node accepts from a file, every other node accepts from the network.
//! Problems name the field (`schema.fields[2].name`) and, for files, the line and column; all
//! problems of a file are reported at once.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

use crate::config::Config;
use crate::identity::{ProductId, ProductName, PublicKey};

/// A checked data product descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Descriptor {
    pub name: ProductName,
    /// The business domain that owns the product, e.g. `sales`.
    pub domain: String,
    /// The owning team or contact, e.g. `sales-data@example.com`.
    pub owner: String,
    pub description: String,
    pub tags: Vec<String>,
    #[serde(serialize_with = "serialize_display")]
    pub version: semver::Version,
    pub fields: Vec<Field>,
    pub output_ports: Vec<OutputPort>,
    /// Upstream products this product is derived from.
    pub inputs: Vec<ProductId>,
    pub slo: Slo,
    pub access: AccessPolicy,
}

impl Descriptor {
    /// Parses and checks a descriptor file.
    pub fn from_yaml(text: &str, config: &Config) -> Result<Self, DescriptorErrors> {
        if text.len() > config.descriptor_file_bytes_max {
            return Err(DescriptorErrors(vec![DescriptorError {
                path: "(file)".into(),
                location: None,
                message: format!(
                    "file is {} bytes, over the limit of {}",
                    text.len(),
                    config.descriptor_file_bytes_max
                ),
            }]));
        }
        let raw: RawDescriptor = serde_saphyr::from_str(text).map_err(|e| {
            let message = yaml_error_message(&e);
            DescriptorErrors(vec![DescriptorError {
                path: yaml_error_path(&message),
                location: e.location().and_then(|l| TextLocation::from_yaml(&l)),
                message,
            }])
        })?;
        raw.check(config)
    }

    /// Whether the descriptor declares any field as personally identifiable information.
    pub fn has_pii(&self) -> bool {
        self.fields.iter().any(|f| f.pii)
    }
}

/// One field of a product's schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Field {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Holds personally identifiable information.
    pub pii: bool,
    pub nullable: bool,
    pub description: String,
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }

            fn expected() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// The type of a schema field.
    FieldType {
        String = "string",
        Int = "int",
        Float = "float",
        Bool = "bool",
        Decimal = "decimal",
        Date = "date",
        Timestamp = "timestamp",
        Bytes = "bytes",
        Json = "json",
    }
);

string_enum!(
    /// How a product's data is offered.
    PortKind {
        ChangeLog = "change-log",
        Snapshot = "snapshot",
    }
);

/// A way consumers read the product.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutputPort {
    pub name: String,
    pub kind: PortKind,
    /// Payload encoding, e.g. `json`.
    pub format: String,
    pub description: String,
}

/// Service level objectives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Slo {
    /// Maximum age of the newest event.
    #[serde(serialize_with = "serialize_duration")]
    pub freshness: Option<Duration>,
    /// Producer-to-subscriber p99 latency.
    #[serde(serialize_with = "serialize_duration")]
    pub latency_p99: Option<Duration>,
}

/// Who may read a product's log. Every peer that serves the log enforces it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "visibility", rename_all = "lowercase")]
pub enum AccessPolicy {
    /// Any peer may read.
    #[default]
    Public,
    /// Only the owner and the listed peers may read.
    Restricted { allowed: Vec<PublicKey> },
}

impl AccessPolicy {
    /// Whether `reader` may read a log owned by `owner` under this policy.
    pub fn allows(&self, owner: &PublicKey, reader: &PublicKey) -> bool {
        match self {
            AccessPolicy::Public => true,
            AccessPolicy::Restricted { allowed } => reader == owner || allowed.contains(reader),
        }
    }
}

/// Where in a descriptor file a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextLocation {
    pub line: u64,
    pub column: u64,
}

impl TextLocation {
    fn from_yaml(location: &Location) -> Option<Self> {
        (*location != Location::UNKNOWN && location.line() > 0).then(|| Self {
            line: location.line(),
            column: location.column(),
        })
    }
}

/// One problem in a descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorError {
    /// The field, e.g. `schema.fields[2].name`, or `(file)` for a problem with the file itself.
    pub path: String,
    /// Line and column in the file; `None` for descriptors from the wire.
    pub location: Option<TextLocation>,
    pub message: String,
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = self.location {
            write!(f, "line {}, column {}: ", at.line, at.column)?;
        }
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a descriptor (at least one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorErrors(pub Vec<DescriptorError>);

impl fmt::Display for DescriptorErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DescriptorErrors {}

/// The first line of a YAML error, without the source snippet some errors render and without
/// the location, which [`DescriptorError`] prints itself.
fn yaml_error_message(error: &serde_saphyr::Error) -> String {
    let text = error.to_string();
    let mut message = text.lines().next().unwrap_or("invalid YAML").trim();
    message = message
        .strip_prefix("error:")
        .unwrap_or(message)
        .trim_start();
    // "line 5 column 1: missing field `version`" -> "missing field `version`"
    if message.starts_with("line ")
        && let Some((_, rest)) = message.split_once(": ")
    {
        message = rest;
    }
    message.to_owned()
}

/// The field a serde error names ("missing field `version`", "unknown field `taggs`").
fn yaml_error_path(message: &str) -> String {
    message
        .split_once("field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(field, _)| field)
        // An empty key (`! :`) makes serde name the field "".
        .filter(|field| !field.is_empty())
        .map_or_else(|| "(file)".to_owned(), str::to_owned)
}

// ---- raw values, as parsed -------------------------------------------------------------------

type Text = Spanned<String>;

/// A descriptor as written, before checks. Every value carries where it was written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDescriptor {
    pub name: Text,
    pub domain: Text,
    pub owner: Text,
    pub description: Text,
    #[serde(default)]
    pub tags: Vec<Text>,
    pub version: Text,
    pub schema: RawSchema,
    #[serde(default)]
    pub output_ports: Vec<RawPort>,
    #[serde(default)]
    pub inputs: Vec<Text>,
    #[serde(default)]
    pub slo: RawSlo,
    #[serde(default)]
    pub access: RawAccess,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSchema {
    pub fields: Vec<RawField>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawField {
    pub name: Text,
    #[serde(rename = "type")]
    pub field_type: Text,
    #[serde(default)]
    pub pii: bool,
    #[serde(default)]
    pub nullable: bool,
    #[serde(default)]
    pub description: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPort {
    pub name: Text,
    pub kind: Text,
    #[serde(default)]
    pub format: Option<Text>,
    #[serde(default)]
    pub description: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSlo {
    /// e.g. `15m`
    #[serde(default)]
    pub freshness: Option<Text>,
    /// e.g. `500ms`
    #[serde(default)]
    pub latency_p99: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccess {
    /// `public` (default) or `restricted`.
    #[serde(default)]
    pub visibility: Option<Text>,
    /// PeerIds allowed to read a restricted product.
    #[serde(default)]
    pub allowed: Vec<Text>,
}

/// A raw value with no position, for descriptors that come from the wire.
pub(crate) fn unplaced(text: impl Into<String>) -> Text {
    Spanned::new(text.into(), Location::UNKNOWN, Location::UNKNOWN)
}

/// Collects problems while checking a raw descriptor.
struct Problems(Vec<DescriptorError>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, at: &Text, message: impl Into<String>) {
        self.0.push(DescriptorError {
            path: path.into(),
            location: TextLocation::from_yaml(&at.referenced),
            message: message.into(),
        });
    }

    /// Checks a free-text value: its length, and that it has no control characters.
    fn text(&mut self, path: &str, value: &Text, required: bool, max: usize) -> String {
        let text = value.value.trim();
        if required && text.is_empty() {
            self.add(path, value, "must not be empty");
        } else if text.len() > max {
            self.add(
                path,
                value,
                format!("is {} bytes, over the limit of {max}", text.len()),
            );
        } else if text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            self.add(path, value, "contains control characters");
        }
        text.to_owned()
    }
}

impl RawDescriptor {
    pub(crate) fn check(self, config: &Config) -> Result<Descriptor, DescriptorErrors> {
        let mut p = Problems(Vec::new());
        let short = config.short_text_bytes_max;
        let long = config.description_bytes_max;

        let name = ProductName::new(self.name.value.trim())
            .map_err(|e| p.add("name", &self.name, e.to_string()))
            .ok();
        let domain = p.text("domain", &self.domain, true, short);
        let owner = p.text("owner", &self.owner, true, short);
        let description = p.text("description", &self.description, true, long);

        if self.tags.len() > config.tags_max {
            p.add(
                "tags",
                &self.tags[config.tags_max],
                format!("more than {} tags", config.tags_max),
            );
        }
        let mut tags = Vec::new();
        for (i, tag) in self.tags.iter().enumerate().take(config.tags_max) {
            let written = p.text(&format!("tags[{i}]"), tag, true, short);
            // Lower-casing can lengthen a text ('İ' is 2 bytes, "i̇" 3): check again, so that a
            // file accepted here is never refused on the wire.
            let text = written.to_lowercase();
            if written.len() <= short && text.len() > short {
                p.add(
                    format!("tags[{i}]"),
                    tag,
                    format!(
                        "is {} bytes once lower-cased, over the limit of {short}",
                        text.len()
                    ),
                );
            } else if tags.contains(&text) {
                p.add(format!("tags[{i}]"), tag, format!("duplicate tag {text:?}"));
            }
            tags.push(text);
        }

        let version = semver::Version::parse(self.version.value.trim())
            .map_err(|e| {
                let message = format!(
                    "{:?} is not a semantic version (MAJOR.MINOR.PATCH): {e}",
                    self.version.value
                );
                p.add("version", &self.version, message)
            })
            .ok();

        let fields = check_fields(&mut p, self.schema.fields, config);
        let output_ports = check_ports(&mut p, self.output_ports, config);
        let inputs = check_inputs(&mut p, self.inputs, config);
        let slo = Slo {
            freshness: check_duration(&mut p, "slo.freshness", self.slo.freshness),
            latency_p99: check_duration(&mut p, "slo.latency_p99", self.slo.latency_p99),
        };
        let access = check_access(&mut p, self.access, config);

        match (name, version, p.0.is_empty()) {
            (Some(name), Some(version), true) => Ok(Descriptor {
                name,
                domain,
                owner,
                description,
                tags,
                version,
                fields,
                output_ports,
                inputs,
                slo,
                access,
            }),
            _ => Err(DescriptorErrors(p.0)),
        }
    }
}

fn check_fields(p: &mut Problems, raw: Vec<RawField>, config: &Config) -> Vec<Field> {
    if raw.is_empty() {
        p.add(
            "schema.fields",
            &unplaced(""),
            "a schema needs at least one field",
        );
    }
    if let Some(extra) = raw.get(config.fields_max) {
        p.add(
            "schema.fields",
            &extra.name,
            format!("more than {} fields", config.fields_max),
        );
    }
    let mut seen = BTreeSet::new();
    let mut fields = Vec::new();
    for (i, f) in raw.into_iter().enumerate().take(config.fields_max) {
        let path = format!("schema.fields[{i}]");
        let name = p.text(
            &format!("{path}.name"),
            &f.name,
            true,
            config.short_text_bytes_max,
        );
        let identifier = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name.is_empty() && !identifier {
            p.add(
                format!("{path}.name"),
                &f.name,
                format!("{name:?} is not a field name: use letters, digits and '_', not starting with a digit"),
            );
        }
        if !seen.insert(name.to_lowercase()) && !name.is_empty() {
            p.add(
                format!("{path}.name"),
                &f.name,
                format!("duplicate field name {name:?}"),
            );
        }
        let field_type = FieldType::parse(f.field_type.value.trim());
        if field_type.is_none() {
            p.add(
                format!("{path}.type"),
                &f.field_type,
                format!(
                    "unknown type {:?}; expected one of {}",
                    f.field_type.value,
                    FieldType::expected()
                ),
            );
        }
        let description = f
            .description
            .map(|d| {
                p.text(
                    &format!("{path}.description"),
                    &d,
                    false,
                    config.description_bytes_max,
                )
            })
            .unwrap_or_default();
        if let Some(field_type) = field_type {
            fields.push(Field {
                name,
                field_type,
                pii: f.pii,
                nullable: f.nullable,
                description,
            });
        }
    }
    fields
}

fn check_ports(p: &mut Problems, raw: Vec<RawPort>, config: &Config) -> Vec<OutputPort> {
    if let Some(extra) = raw.get(config.output_ports_max) {
        p.add(
            "output_ports",
            &extra.name,
            format!("more than {} output ports", config.output_ports_max),
        );
    }
    let mut seen = BTreeSet::new();
    let mut ports = Vec::new();
    for (i, port) in raw.into_iter().enumerate().take(config.output_ports_max) {
        let path = format!("output_ports[{i}]");
        let name = p.text(
            &format!("{path}.name"),
            &port.name,
            true,
            config.short_text_bytes_max,
        );
        if !seen.insert(name.clone()) && !name.is_empty() {
            p.add(
                format!("{path}.name"),
                &port.name,
                format!("duplicate port name {name:?}"),
            );
        }
        let kind = PortKind::parse(port.kind.value.trim());
        if kind.is_none() {
            p.add(
                format!("{path}.kind"),
                &port.kind,
                format!(
                    "unknown kind {:?}; expected one of {}",
                    port.kind.value,
                    PortKind::expected()
                ),
            );
        }
        let format = port
            .format
            .map(|f| {
                p.text(
                    &format!("{path}.format"),
                    &f,
                    true,
                    config.short_text_bytes_max,
                )
            })
            .unwrap_or_else(|| "json".to_owned());
        let description = port
            .description
            .map(|d| {
                p.text(
                    &format!("{path}.description"),
                    &d,
                    false,
                    config.description_bytes_max,
                )
            })
            .unwrap_or_default();
        if let Some(kind) = kind {
            ports.push(OutputPort {
                name,
                kind,
                format,
                description,
            });
        }
    }
    ports
}

fn check_inputs(p: &mut Problems, raw: Vec<Text>, config: &Config) -> Vec<ProductId> {
    if let Some(extra) = raw.get(config.inputs_max) {
        p.add(
            "inputs",
            extra,
            format!("more than {} inputs", config.inputs_max),
        );
    }
    let mut inputs: Vec<ProductId> = Vec::new();
    for (i, input) in raw.iter().enumerate().take(config.inputs_max) {
        match input.value.trim().parse::<ProductId>() {
            Ok(id) if inputs.contains(&id) => {
                p.add(
                    format!("inputs[{i}]"),
                    input,
                    format!("duplicate input {id}"),
                );
            }
            Ok(id) => inputs.push(id),
            Err(e) => p.add(
                format!("inputs[{i}]"),
                input,
                format!("not a product id: {e}"),
            ),
        }
    }
    inputs
}

/// The longest SLO duration: anything longer is a typo.
const DURATION_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn check_duration(p: &mut Problems, path: &str, raw: Option<Text>) -> Option<Duration> {
    let raw = raw?;
    match humantime::parse_duration(raw.value.trim()) {
        Ok(d) if d.is_zero() => {
            p.add(path, &raw, "must be greater than zero");
            None
        }
        Ok(d) if d.subsec_nanos() % 1_000_000 != 0 => {
            p.add(path, &raw, "must be a whole number of milliseconds");
            None
        }
        Ok(d) if d > DURATION_MAX => {
            p.add(path, &raw, "must be at most 10 years");
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            p.add(
                path,
                &raw,
                format!(
                    "{:?} is not a duration such as 15m or 500ms: {e}",
                    raw.value
                ),
            );
            None
        }
    }
}

fn check_access(p: &mut Problems, raw: RawAccess, config: &Config) -> AccessPolicy {
    let visibility = raw
        .visibility
        .as_ref()
        .map(|v| v.value.trim())
        .unwrap_or("public");
    let mut allowed = Vec::new();
    if let Some(extra) = raw.allowed.get(config.allowed_peers_max) {
        p.add(
            "access.allowed",
            extra,
            format!("more than {} peers", config.allowed_peers_max),
        );
    }
    for (i, peer) in raw
        .allowed
        .iter()
        .enumerate()
        .take(config.allowed_peers_max)
    {
        match peer.value.trim().parse::<PublicKey>() {
            Ok(key) if !allowed.contains(&key) => allowed.push(key),
            Ok(key) => p.add(
                format!("access.allowed[{i}]"),
                peer,
                format!("duplicate peer {key}"),
            ),
            Err(e) => p.add(
                format!("access.allowed[{i}]"),
                peer,
                format!("not a PeerId: {e}"),
            ),
        }
    }
    match visibility {
        "public" => {
            if let Some(first) = raw.allowed.first() {
                p.add(
                    "access.allowed",
                    first,
                    "an allow-list needs `visibility: restricted`",
                );
            }
            AccessPolicy::Public
        }
        "restricted" => AccessPolicy::Restricted { allowed },
        other => {
            let at = raw
                .visibility
                .as_ref()
                .cloned()
                .unwrap_or_else(|| unplaced(""));
            p.add(
                "access.visibility",
                &at,
                format!("unknown visibility {other:?}; expected public or restricted"),
            );
            AccessPolicy::Public
        }
    }
}

fn serialize_display<T: fmt::Display, S: serde::Serializer>(
    value: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn serialize_duration<S: serde::Serializer>(
    value: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => s.collect_str(&humantime::format_duration(*d)),
        None => s.serialize_none(),
    }
}
