//! SVG plots of a run: catalog convergence CDF, event latency CDF by hop count, bandwidth per
//! node.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::report::{Report, Samples};

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

/// Writes every plot of a report into `dir`.
pub fn all(dir: &Path, report: &Report, samples: &Samples) -> anyhow::Result<()> {
    let title = format!(
        "{} ({}, {} nodes)",
        report.scenario, report.stack, report.nodes
    );
    let mut catalog = BTreeMap::new();
    catalog.insert(
        "delivery to a node".to_owned(),
        samples.catalog_delivery_ms.clone(),
    );
    catalog.insert(
        "entry at 100% of nodes".to_owned(),
        samples.catalog_to_100pct_ms.clone(),
    );
    cdf(
        &dir.join("catalog_cdf.svg"),
        &format!("catalog convergence: {title}"),
        "ms after publish (log scale)",
        &catalog,
    )?;
    cdf(
        &dir.join("latency_cdf.svg"),
        &format!("event delivery latency: {title}"),
        "ms from producer commit to subscriber commit (log scale)",
        &samples
            .event_latency_by_hop
            .iter()
            .map(|(k, v)| (format!("{k} hop(s)"), v.clone()))
            .collect(),
    )?;
    bandwidth(&dir.join("bandwidth.svg"), &title, &samples.sent_by_node)
}

/// Empirical CDFs of several sample sets on a log x axis.
pub fn cdf(
    path: &Path,
    caption: &str,
    x_desc: &str,
    series: &BTreeMap<String, Vec<f64>>,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let all: Vec<f64> = series.values().flatten().copied().collect();
    let smallest = all
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let lo = smallest.clamp(0.01, 1.0);
    let hi = all.iter().copied().fold(lo * 10.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("fraction")
        .draw()
        .map_err(err)?;
    for (i, (name, samples)) in series.iter().enumerate() {
        if samples.is_empty() {
            continue;
        }
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        // At most ~2000 points per curve keeps the SVG small.
        let step = (sorted.len() / 2000).max(1);
        let points: Vec<(f64, f64)> = sorted
            .iter()
            .enumerate()
            .filter(|(k, _)| k % step == 0 || *k == sorted.len() - 1)
            .map(|(k, v)| (v.max(lo), (k + 1) as f64 / n))
            .collect();
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(err)?
            .label(format!("{name} (n={})", samples.len()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Bytes sent per node, nodes sorted by total, one line per protocol and the total.
fn bandwidth(
    path: &Path,
    title: &str,
    sent_by_node: &[BTreeMap<String, u64>],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut order: Vec<usize> = (0..sent_by_node.len()).collect();
    let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
    order.sort_by_key(|&i| std::cmp::Reverse(total(&sent_by_node[i])));
    let max_kib = sent_by_node
        .iter()
        .map(|m| total(m) as f64 / 1024.0)
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("bytes sent per node: {title}"), ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..(sent_by_node.len().max(2) - 1) as f64, 0f64..max_kib)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("nodes, sorted by bytes sent")
        .y_desc("KiB sent (plaintext, whole run)")
        .draw()
        .map_err(err)?;
    let mut protocols: Vec<String> = sent_by_node
        .iter()
        .flat_map(|m| m.keys().cloned())
        .collect();
    protocols.sort();
    protocols.dedup();
    type Value = Box<dyn Fn(&BTreeMap<String, u64>) -> u64>;
    let mut lines: Vec<(String, Value)> = vec![("total".to_owned(), Box::new(total))];
    for p in protocols {
        let key = p.clone();
        lines.push((p, Box::new(move |m| m.get(&key).copied().unwrap_or(0))));
    }
    for (i, (name, value)) in lines.iter().enumerate() {
        let points: Vec<(f64, f64)> = order
            .iter()
            .enumerate()
            .map(|(x, &node)| (x as f64, value(&sent_by_node[node]) as f64 / 1024.0))
            .collect();
        if points.iter().all(|(_, y)| *y == 0.0) {
            continue;
        }
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
