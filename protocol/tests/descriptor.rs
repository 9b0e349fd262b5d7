//! Descriptor files: problems are reported with the field that has them and where it is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ORDERS_YAML, key, product};
use mesh_protocol::descriptor::PortKind;
use mesh_protocol::{AccessPolicy, Config, Descriptor, DescriptorError, FieldType};
use std::time::Duration;

fn problems(yaml: &str) -> Vec<DescriptorError> {
    Descriptor::from_yaml(yaml, &Config::default())
        .unwrap_err()
        .0
}

/// The single problem in `yaml`, as `(path, line)`.
fn problem(yaml: &str) -> (String, Option<u64>, String) {
    let all = problems(yaml);
    assert_eq!(all.len(), 1, "expected one problem, got {all:?}");
    let p = &all[0];
    (
        p.path.clone(),
        p.location.map(|l| l.line),
        p.message.clone(),
    )
}

#[test]
fn a_complete_descriptor_parses() {
    let d = Descriptor::from_yaml(ORDERS_YAML, &Config::default()).unwrap();
    assert_eq!(d.name.as_str(), "orders");
    assert_eq!(d.domain, "sales");
    assert_eq!(d.version, semver::Version::new(1, 2, 0));
    assert_eq!(d.tags, ["orders", "revenue", "customers"]);
    assert_eq!(d.fields.len(), 3);
    assert_eq!(d.fields[2].field_type, FieldType::Decimal);
    assert!(d.fields[1].pii && !d.fields[0].pii);
    assert_eq!(d.output_ports[0].kind, PortKind::ChangeLog);
    assert_eq!(d.slo.freshness, Some(Duration::from_secs(15 * 60)));
    assert_eq!(d.slo.latency_p99, Some(Duration::from_millis(500)));
    assert_eq!(d.access, AccessPolicy::Public);
}

#[test]
fn a_missing_required_field_is_named() {
    for field in ["name", "domain", "owner", "description", "version"] {
        let yaml: String = ORDERS_YAML
            .lines()
            .filter(|l| !l.starts_with(&format!("{field}:")))
            .map(|l| format!("{l}\n"))
            .collect();
        let (path, _, message) = problem(&yaml);
        assert_eq!(path, field, "{message}");
        assert!(message.contains("missing"), "{message}");
    }
    // Without the whole schema block (lines 7-16).
    let no_schema: String = ORDERS_YAML
        .lines()
        .enumerate()
        .filter(|(i, _)| !(6..16).contains(i))
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let (path, _, message) = problem(&no_schema);
    assert_eq!(path, "schema", "{message}");
    // An empty schema is refused too.
    let empty = no_schema.replace("output_ports:", "schema:\n  fields: []\noutput_ports:");
    let (path, _, message) = problem(&empty);
    assert_eq!(path, "schema.fields", "{message}");
}

#[test]
fn a_bad_version_names_the_field_and_its_line() {
    let yaml = ORDERS_YAML.replace("version: 1.2.0", "version: 1.2");
    let (path, line, message) = problem(&yaml);
    assert_eq!((path.as_str(), line), ("version", Some(6)));
    assert!(message.contains("semantic version"), "{message}");
}

#[test]
fn duplicate_field_names_are_reported_at_the_second_one() {
    let yaml = ORDERS_YAML.replace("name: total", "name: order_id");
    let (path, line, message) = problem(&yaml);
    assert_eq!((path.as_str(), line), ("schema.fields[2].name", Some(15)));
    assert!(
        message.contains("duplicate field name \"order_id\""),
        "{message}"
    );
}

#[test]
fn inputs_must_be_product_ids() {
    let upstream = product(&key(9), "customers");
    let good = format!("{ORDERS_YAML}inputs:\n  - {upstream}\n");
    let d = Descriptor::from_yaml(&good, &Config::default()).unwrap();
    assert_eq!(d.inputs, vec![upstream.clone()]);

    let bad = format!("{ORDERS_YAML}inputs:\n  - {upstream}\n  - customers\n");
    let (path, line, message) = problem(&bad);
    assert_eq!((path.as_str(), line), ("inputs[1]", Some(28)));
    assert!(message.contains("NAME@PEER_ID"), "{message}");

    let twice = format!("{ORDERS_YAML}inputs:\n  - {upstream}\n  - {upstream}\n");
    assert!(problem(&twice).2.contains("duplicate input"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = ORDERS_YAML
        .replace("name: orders", "name: Orders!")
        .replace("type: decimal", "type: money")
        .replace("freshness: 15m", "freshness: soon");
    let paths: Vec<String> = problems(&yaml).into_iter().map(|p| p.path).collect();
    assert_eq!(paths, ["name", "schema.fields[2].type", "slo.freshness"]);
}

#[test]
fn typos_in_keys_are_refused_not_ignored() {
    let yaml = ORDERS_YAML.replace("tags:", "taggs:");
    let (path, line, message) = problem(&yaml);
    assert_eq!((path.as_str(), line), ("taggs", Some(5)));
    assert!(message.contains("unknown field"), "{message}");
}

#[test]
fn wrong_types_and_broken_yaml_say_where() {
    let yaml = ORDERS_YAML.replace("pii: true", "pii: maybe");
    let (_, line, _) = problem(&yaml);
    assert_eq!(line, Some(14));
    let (_, line, _) = problem("name: [orders\n");
    assert_eq!(line, Some(1));
}

#[test]
fn restricted_access_lists_peer_ids() {
    let reader = key(5).public();
    let yaml = ORDERS_YAML.replace(
        "visibility: public",
        &format!("visibility: restricted\n  allowed:\n    - {reader}"),
    );
    let d = Descriptor::from_yaml(&yaml, &Config::default()).unwrap();
    let owner = key(1).public();
    assert!(d.access.allows(&owner, &reader));
    assert!(d.access.allows(&owner, &owner));
    assert!(!d.access.allows(&owner, &key(6).public()));

    let public_with_list = ORDERS_YAML.replace(
        "visibility: public",
        &format!("visibility: public\n  allowed: [{reader}]"),
    );
    assert_eq!(problem(&public_with_list).0, "access.allowed");
    let bad_peer = ORDERS_YAML.replace(
        "visibility: public",
        "visibility: restricted\n  allowed: [not-a-peer]",
    );
    assert_eq!(problem(&bad_peer).0, "access.allowed[0]");
}

#[test]
fn limits_apply_to_files() {
    let config = Config::default();
    let many_tags: Vec<String> = (0..=config.tags_max).map(|i| format!("t{i}")).collect();
    let yaml = ORDERS_YAML.replace(
        "tags: [orders, revenue, customers]",
        &format!("tags: [{}]", many_tags.join(", ")),
    );
    assert!(problem(&yaml).2.contains("more than 32 tags"));
    let huge = format!(
        "{ORDERS_YAML}#{}\n",
        "x".repeat(config.descriptor_file_bytes_max)
    );
    assert!(problem(&huge).2.contains("over the limit"));
    let sub_ms = ORDERS_YAML.replace("latency_p99: 500ms", "latency_p99: 1500us");
    assert!(problem(&sub_ms).2.contains("milliseconds"));
}

#[test]
fn errors_print_line_column_path_and_message() {
    let yaml = ORDERS_YAML.replace("version: 1.2.0", "version: one");
    let text = Descriptor::from_yaml(&yaml, &Config::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with("line 6, column 10: version: \"one\" is not a semantic version"),
        "{text}"
    );
}

#[test]
fn a_tag_that_grows_when_lower_cased_is_checked_after() {
    let config = Config::default();
    // 'İ' is 2 bytes and lower-cases to "i̇", 3 bytes: the written tag is at the limit, the
    // stored one would be over it, and peers would refuse the signed entry.
    let tag = format!("{}İ", "a".repeat(config.short_text_bytes_max - 2));
    assert_eq!(tag.len(), config.short_text_bytes_max);
    let yaml = ORDERS_YAML.replace("tags: [orders,", &format!("tags: [\"{tag}\","));
    let (path, line, message) = problem(&yaml);
    assert_eq!((path.as_str(), line), ("tags[0]", Some(5)));
    assert!(message.contains("once lower-cased"), "{message}");
}

#[test]
fn an_empty_key_is_reported_against_the_file() {
    let all = problems("! :\n");
    assert!(!all.is_empty());
    assert!(all.iter().all(|p| !p.path.is_empty()), "{all:?}");
}
