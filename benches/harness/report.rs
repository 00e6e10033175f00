//! Turning samples into medians [min–max], ratios to kernel VXLAN, a markdown report, JSON lines and an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::measure::Sample;
use crate::{Mode, Test};

/// One test of one mode in one round; `Err` holds why it failed.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) round: u32,
    pub(crate) mode: Mode,
    pub(crate) test: Test,
    pub(crate) result: Result<Sample, String>,
}

impl Record {
    /// The JSON line for this record.
    pub(crate) fn to_json(&self) -> Value {
        let mut v = json!({"type": "sample", "round": self.round, "mode": self.mode.to_string(), "test": self.test.to_string()});
        match &self.result {
            Err(e) => v["error"] = json!(e),
            Ok(s) => {
                let fields = json!({
                    "value": s.value, "unit": self.test.unit(), "rx_bytes": s.rx_bytes, "rx_packets": s.rx_packets,
                    "offered_pps": s.offered_pps, "loss_pct": s.loss_pct, "retransmits": s.retransmits,
                    "iperf_seconds": s.seconds, "wall_s": s.wall_s, "cpu_busy_s": s.cpu_busy_s, "cpu_steal_s": s.cpu_steal_s,
                    "busy_cores": s.busy_cores, "cpu_s_per_gb": finite(s.cpu_s_per_gb), "cpu_us_per_pkt": s.cpu_us_per_pkt,
                    "pre_busy_cores": s.pre_busy_cores, "foreign_cpu_s": s.foreign_cpu_s, "attempt": s.attempt,
                });
                if let (Value::Object(dst), Value::Object(src)) = (&mut v, fields) {
                    dst.extend(src);
                }
                if let Some(l) = &s.latency {
                    let lat = json!({"lat_p50_us": l.p50, "lat_p99_us": l.p99, "lat_p999_us": l.p999,
                        "lat_observations": l.observations, "lat_dropped": l.dropped, "lat_seconds": l.seconds});
                    if let (Value::Object(dst), Value::Object(src)) = (&mut v, lat) {
                        dst.extend(src);
                    }
                }
                if let Some(d) = &s.weft_drops {
                    v["weft_drops"] = json!(d);
                }
            }
        }
        v
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// median, min, max, n of the values (NaN dropped).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) n: usize,
}

pub(crate) fn stat(mut v: Vec<f64>) -> Option<Stat> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

fn collect(
    records: &[Record],
    mode: Mode,
    test: Test,
    f: impl Fn(&Sample) -> Option<f64>,
) -> Option<Stat> {
    stat(
        records
            .iter()
            .filter(|r| r.mode == mode && r.test == test)
            .filter_map(|r| r.result.as_ref().ok())
            .filter_map(&f)
            .collect(),
    )
}

/// Scales and formats a primary value: Gbit/s with 2 decimals, pps as kpps with 1.
fn fmt_value(test: Test, x: f64) -> String {
    if test.udp_len().is_some() {
        format!("{:.1}", x / 1e3)
    } else {
        format!("{x:.2}")
    }
}

fn fmt_stat(s: Option<Stat>, f: impl Fn(f64) -> String) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n == 1 => f(s.median),
        Some(s) => format!("{} [{}–{}]", f(s.median), f(s.min), f(s.max)),
    }
}

/// The markdown report: results table with ratios to VXLAN, then cost and loss, then failures.
pub(crate) fn markdown(records: &[Record], modes: &[Mode], all: &[Test], header: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "{header}\n");
    let tests: Vec<Test> = all
        .iter()
        .copied()
        .filter(|t| t.request_response().is_none())
        .collect();
    let rr: Vec<Test> = all
        .iter()
        .copied()
        .filter(|t| t.request_response().is_some())
        .collect();
    if !tests.is_empty() {
        throughput_tables(&mut md, records, modes, &tests);
    }
    if !rr.is_empty() {
        latency_tables(&mut md, records, modes, &rr);
    }
    if let Some(f) = stat(
        records
            .iter()
            .filter_map(|r| r.result.as_ref().ok())
            .map(|s| s.foreign_cpu_s)
            .collect(),
    ) {
        let _ = writeln!(
            md,
            "\nCPU used by other workloads on the machine during the test windows: median {:.2} [{:.2}–{:.2}] CPU-s per window (a lower bound; included in CPU-s/GB).",
            f.median, f.min, f.max
        );
    }
    let busy = stat(
        records
            .iter()
            .filter_map(|r| r.result.as_ref().ok())
            .map(|s| s.pre_busy_cores)
            .collect(),
    );
    let steal: f64 = records
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .map(|s| s.cpu_steal_s)
        .sum();
    if let Some(b) = busy {
        let _ = writeln!(md, "Machine load just before each test: median {:.2} [{:.2}–{:.2}] busy cores; total steal over all windows {steal:.1} s.", b.median, b.min, b.max);
    }
    let failed: Vec<&Record> = records.iter().filter(|r| r.result.is_err()).collect();
    if !failed.is_empty() {
        let _ = writeln!(md, "\nFailed tests ({}):", failed.len());
        for r in failed {
            let _ = writeln!(
                md,
                "- round {} {} {}: {}",
                r.round,
                r.mode,
                r.test,
                r.result.as_ref().err().map(String::as_str).unwrap_or("")
            );
        }
    }
    md
}

/// `dropped=N` and each reason that grew, as `N (reason M, …)`.
pub(crate) fn drops_text(d: &BTreeMap<String, u64>) -> String {
    let total = d.get("dropped").copied().unwrap_or(0);
    let reasons: Vec<String> = d
        .iter()
        .filter(|(k, &v)| k.as_str() != "dropped" && v > 0)
        .map(|(k, v)| format!("{} {v}", k.trim_start_matches("drop_")))
        .collect();
    if reasons.is_empty() {
        total.to_string()
    } else {
        format!("{total} ({})", reasons.join(", "))
    }
}

/// weft's drops in the test windows of `mode` × `test`, summed over the rounds; `None` if no
/// sample of them carries drop counts (not a weft mode).
fn drops_sum(records: &[Record], mode: Mode, test: Test) -> Option<BTreeMap<String, u64>> {
    let mut sum: Option<BTreeMap<String, u64>> = None;
    for d in records
        .iter()
        .filter(|r| r.mode == mode && r.test == test)
        .filter_map(|r| r.result.as_ref().ok())
        .filter_map(|s| s.weft_drops.as_ref())
    {
        let acc = sum.get_or_insert_with(BTreeMap::new);
        for (k, v) in d {
            *acc.entry(k.clone()).or_insert(0) += v;
        }
    }
    sum
}

/// The throughput and cost tables (iperf3 tests).
fn throughput_tables(md: &mut String, records: &[Record], modes: &[Mode], tests: &[Test]) {
    let _ = write!(md, "| mode |");
    for t in tests {
        let _ = write!(md, " {} |", t.title());
    }
    let _ = write!(md, "\n|---|");
    for _ in tests {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for &m in modes {
        let _ = write!(md, "| {m} |");
        for &t in tests {
            let s = collect(records, m, t, |s| Some(s.value));
            let base = collect(records, m.baseline(), t, |s| Some(s.value));
            let ratio = match (s, base) {
                (Some(s), Some(b)) if b.median > 0.0 => format!(" **{:.2}×**", s.median / b.median),
                _ => String::new(),
            };
            let n = s.map(|s| format!(" n={}", s.n)).unwrap_or_default();
            let _ = write!(md, " {}{ratio}{n} |", fmt_stat(s, |x| fmt_value(t, x)));
        }
        md.push('\n');
    }
    let _ = writeln!(md, "\nMedian [min–max] over the rounds; **bold** = ratio of medians to kernel VXLAN in this run (weft-vxlan6: to vxlan6, kernel VXLAN over IPv6). UDP: packets/s received (server side), in thousands.\n");

    let _ = write!(md, "| mode |");
    for t in tests {
        let _ = write!(md, " CPU-s/GB {t} |");
    }
    for t in tests.iter().filter(|t| t.udp_len().is_some()) {
        let _ = write!(
            md,
            " µs CPU/pkt {t} | loss {t} | offered {t} kpps | weft drops {t} |"
        );
    }
    for t in tests.iter().filter(|t| t.udp_len().is_none()) {
        let _ = write!(md, " retransmits {t} |");
    }
    let _ = write!(md, "\n|---|");
    let cols = tests.len()
        + tests
            .iter()
            .map(|t| if t.udp_len().is_some() { 4 } else { 1 })
            .sum::<usize>();
    for _ in 0..cols {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for &m in modes {
        let _ = write!(md, "| {m} |");
        for &t in tests {
            let _ = write!(
                md,
                " {} |",
                fmt_stat(
                    collect(records, m, t, |s| finite(s.cpu_s_per_gb)),
                    |x| format!("{x:.2}")
                )
            );
        }
        for &t in tests.iter().filter(|t| t.udp_len().is_some()) {
            let loss = fmt_stat(collect(records, m, t, |s| s.loss_pct), |x| {
                format!("{x:.1}%")
            });
            let off = fmt_stat(collect(records, m, t, |s| s.offered_pps), |x| {
                format!("{:.0}", x / 1e3)
            });
            let us = fmt_stat(collect(records, m, t, |s| s.cpu_us_per_pkt), |x| {
                format!("{x:.1}")
            });
            let drops = drops_sum(records, m, t).map_or_else(|| "–".into(), |d| drops_text(&d));
            let _ = write!(md, " {us} | {loss} | {off} | {drops} |");
        }
        for &t in tests.iter().filter(|t| t.udp_len().is_none()) {
            let _ = write!(
                md,
                " {} |",
                fmt_stat(collect(records, m, t, |s| s.retransmits), |x| format!(
                    "{x:.0}"
                ))
            );
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "\nCPU-s/GB: busy CPU-seconds of the whole machine (user+system+irq+softirq from /proc/stat, steal excluded) over each test window, per GB received; µs CPU/pkt: the same per UDP packet received. weft drops: the daemons' `dropped` over the test windows, both hosts, summed over the rounds, with each reason that grew (SIGUSR1 stats line before and after each test)."
    );
}

/// The request/response tables (sockperf ping-pong).
fn latency_tables(md: &mut String, records: &[Record], modes: &[Mode], tests: &[Test]) {
    let lat = |m: Mode, t: Test, f: fn(&crate::latency::Latency) -> f64| {
        collect(records, m, t, |s| s.latency.as_ref().map(f))
    };
    let _ = write!(md, "\n| mode |");
    for t in tests {
        let _ = write!(md, " {} p50 / p99 / p99.9 µs |", t.title());
    }
    let _ = write!(md, "\n|---|");
    for _ in tests {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    let us = |x: f64| format!("{x:.1}");
    for &m in modes {
        let _ = write!(md, "| {m} |");
        for &t in tests {
            let (p50, p99, p999) = (
                lat(m, t, |l| l.p50),
                lat(m, t, |l| l.p99),
                lat(m, t, |l| l.p999),
            );
            let vs = match (
                p50,
                p99,
                lat(m.baseline(), t, |l| l.p50),
                lat(m.baseline(), t, |l| l.p99),
            ) {
                (Some(a), Some(b), Some(va), Some(vb)) if m != m.baseline() && vb.median > 0.0 => {
                    format!(
                        " **{:+.1} µs, {:.2}×**",
                        a.median - va.median,
                        b.median / vb.median
                    )
                }
                _ => String::new(),
            };
            let n = p50.map(|s| format!(" n={}", s.n)).unwrap_or_default();
            let _ = write!(
                md,
                " {} / {} / {}{vs}{n} |",
                fmt_stat(p50, us),
                fmt_stat(p99, us),
                fmt_stat(p999, us)
            );
        }
        md.push('\n');
    }
    let _ = writeln!(md, "\nHalf round trip (sockperf ping-pong, server in ctr_b, client in ctr_a; one message in flight), median [min–max] over the rounds; **bold** = p50 minus kernel VXLAN's p50, and p99 as a ratio to VXLAN's, in this run (weft-vxlan6: to vxlan6's).\n");
    let _ = write!(md, "| mode |");
    for t in tests {
        let _ = write!(
            md,
            " busy cores {t} | CPU µs/exchange {t} | weft drops {t} |"
        );
    }
    let _ = write!(md, "\n|---|");
    for _ in 0..tests.len() * 3 {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for &m in modes {
        let _ = write!(md, "| {m} |");
        for &t in tests {
            let busy = fmt_stat(collect(records, m, t, |s| Some(s.busy_cores)), |x| {
                format!("{x:.2}")
            });
            let cpu = fmt_stat(collect(records, m, t, |s| s.cpu_us_per_pkt), us);
            let drops = drops_sum(records, m, t).map_or_else(|| "–".into(), |d| drops_text(&d));
            let _ = write!(md, " {busy} | {cpu} | {drops} |");
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "\nbusy cores: the whole machine's busy CPU over the test window; CPU µs/exchange: that per request/response exchange."
    );
}

/// SVG bar chart: median TCP 1 and 4 stream throughput per mode relative to kernel VXLAN, whiskers min–max.
/// Without VXLAN samples it plots absolute Gbit/s.
pub(crate) fn svg(records: &[Record], modes: &[Mode], title: &str) -> String {
    let tests = [Test::Tcp1, Test::Tcp4];
    let rel = tests
        .iter()
        .all(|&t| collect(records, Mode::Vxlan, t, |s| Some(s.value)).is_some());
    let scale = |t: Test| {
        if rel {
            collect(records, Mode::Vxlan, t, |s| Some(s.value)).map_or(1.0, |b| b.median)
        } else {
            1.0
        }
    };
    let mut bars = Vec::new(); // (test idx, mode idx, stat scaled)
    let mut top: f64 = if rel { 1.0 } else { 0.0 };
    for (ti, &t) in tests.iter().enumerate() {
        for (mi, &m) in modes.iter().enumerate() {
            if let Some(s) = collect(records, m, t, |s| Some(s.value)) {
                let k = scale(t);
                let s = Stat {
                    median: s.median / k,
                    min: s.min / k,
                    max: s.max / k,
                    n: s.n,
                };
                top = top.max(s.max);
                bars.push((ti, mi, s));
            }
        }
    }
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let (w, h, left, bottom, topm) = (720.0, 400.0, 60.0, 60.0, 40.0);
    let plot_h = h - bottom - topm;
    let group_w = (w - left - 20.0) / tests.len() as f64;
    let bar_w = (group_w - 40.0) / modes.len().max(1) as f64;
    let y = |v: f64| topm + plot_h * (1.0 - v / top);
    let colors = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        w / 2.0,
        xml(title)
    );
    let unit = if rel {
        "× kernel VXLAN (median)"
    } else {
        "Gbit/s (median)"
    };
    let _ = writeln!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{unit}</text>"#,
        topm + plot_h / 2.0,
        topm + plot_h / 2.0
    );
    for i in 0..=4 {
        let v = top * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.2}</text>"##,
            w - 20.0,
            left - 4.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    if rel {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y1:.1}" y2="{y1:.1}" stroke="#000" stroke-dasharray="4 3"/>"##,
            w - 20.0,
            y1 = y(1.0)
        );
    }
    for (ti, t) in tests.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            left + group_w * (ti as f64 + 0.5),
            h - bottom + 20.0,
            if *t == Test::Tcp1 {
                "TCP, 1 stream"
            } else {
                "TCP, 4 streams"
            }
        );
    }
    for &(ti, mi, st) in &bars {
        let x = left + group_w * ti as f64 + 20.0 + bar_w * mi as f64;
        let c = colors[mi % colors.len()];
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{c}"/><line x1="{xm:.1}" x2="{xm:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/><text x="{xm:.1}" y="{:.1}" text-anchor="middle" font-size="10">{:.2}</text>"#,
            x + 2.0,
            y(st.median),
            bar_w - 4.0,
            y(0.0) - y(st.median),
            y(st.min),
            y(st.max),
            y(st.max) - 4.0,
            st.median,
            xm = x + bar_w / 2.0
        );
    }
    for (mi, m) in modes.iter().enumerate() {
        let x = left + 10.0 + mi as f64 * 150.0;
        let c = colors[mi % colors.len()];
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{c}"/><text x="{}" y="{}">{m}</text>"#,
            h - 26.0,
            x + 16.0,
            h - 16.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// SVG bar chart of the request/response tests: per test a group, per mode a bar of the median p50
/// (whisker: min–max over the rounds) and a black tick at the median p99, in µs.
pub(crate) fn latency_svg(
    records: &[Record],
    modes: &[Mode],
    tests: &[Test],
    title: &str,
) -> String {
    let tests: Vec<Test> = tests
        .iter()
        .copied()
        .filter(|t| t.request_response().is_some())
        .collect();
    let mut bars = Vec::new(); // (test idx, mode idx, p50 stat, p99 median)
    let mut top: f64 = 0.0;
    for (ti, &t) in tests.iter().enumerate() {
        for (mi, &m) in modes.iter().enumerate() {
            let p50 = collect(records, m, t, |s| s.latency.as_ref().map(|l| l.p50));
            let p99 = collect(records, m, t, |s| s.latency.as_ref().map(|l| l.p99));
            if let (Some(a), Some(b)) = (p50, p99) {
                top = top.max(a.max).max(b.median);
                bars.push((ti, mi, a, b.median));
            }
        }
    }
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let (w, h, left, bottom, topm) = (860.0, 400.0, 60.0, 60.0, 40.0);
    let plot_h = h - bottom - topm;
    let group_w = (w - left - 20.0) / tests.len().max(1) as f64;
    let bar_w = (group_w - 20.0) / modes.len().max(1) as f64;
    let y = |v: f64| topm + plot_h * (1.0 - v / top);
    let colors = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        w / 2.0,
        xml(title)
    );
    let _ = writeln!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">µs (bar p50, tick p99)</text>"#,
        topm + plot_h / 2.0,
        topm + plot_h / 2.0
    );
    for i in 0..=4 {
        let v = top * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            w - 20.0,
            left - 4.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    for (ti, t) in tests.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            left + group_w * (ti as f64 + 0.5),
            h - bottom + 20.0,
            t.title()
        );
    }
    for &(ti, mi, p50, p99) in &bars {
        let x = left + group_w * ti as f64 + 10.0 + bar_w * mi as f64;
        let c = colors[mi % colors.len()];
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{c}"/><line x1="{xm:.1}" x2="{xm:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/><line x1="{:.1}" x2="{:.1}" y1="{yp:.1}" y2="{yp:.1}" stroke="black" stroke-width="2"/><text x="{xm:.1}" y="{:.1}" text-anchor="middle" font-size="10">{:.0}</text>"#,
            x + 2.0,
            y(p50.median),
            bar_w - 4.0,
            y(0.0) - y(p50.median),
            y(p50.min),
            y(p50.max),
            x + 2.0,
            x + bar_w - 2.0,
            y(p99.max(p50.max)) - 4.0,
            p50.median,
            xm = x + bar_w / 2.0,
            yp = y(p99)
        );
    }
    for (mi, m) in modes.iter().enumerate() {
        let x = left + 10.0 + mi as f64 * 130.0;
        let c = colors[mi % colors.len()];
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{c}"/><text x="{}" y="{}">{m}</text>"#,
            h - 26.0,
            x + 16.0,
            h - 16.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(stat(vec![3.0, 1.0, 2.0]).map(|s| s.median), Some(2.0));
        assert_eq!(
            stat(vec![4.0, 1.0, 2.0, 3.0]).map(|s| (s.median, s.min, s.max)),
            Some((2.5, 1.0, 4.0))
        );
        assert!(stat(vec![f64::NAN]).is_none());
    }
}
