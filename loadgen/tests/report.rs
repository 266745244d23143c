//! The HTML report in a real browser: a short real run through the gateway and
//! mock-upstream writes the report, headless Chromium parses it (`--dump-dom`) and renders
//! it (`--screenshot`), and the test checks that the charts, the per-name table and the
//! SLA verdict are in the browser's DOM and that the screenshot shows them.
//!
//! Needs Debian's `chromium` (`scripts/test.sh` installs it; `LOADGEN_CHROMIUM` names
//! another binary). Without it the test fails: CI must not skip the browser check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{loadgen, scenarios, scratch, stack, wait_bounded};

/// The headless browser binary.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("LOADGEN_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "headless Chromium not found on PATH: the HTML report must be checked in a real \
         browser. Install Debian's chromium (`apt-get install chromium`; scripts/test.sh \
         does) or set LOADGEN_CHROMIUM to a Chromium binary."
    );
}

/// Runs headless Chromium on `page` with `extra` arguments in a fresh profile, bounded;
/// returns its stdout.
fn browse(profile: &Path, page: &Path, extra: &[&str]) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let (out, err) = common::capture(&mut child);
    let status = wait_bounded(
        &mut child,
        &format!("chromium {extra:?}"),
        Duration::from_secs(90),
    );
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "chromium {extra:?} failed: {status}\n{err}"
    );
    out
}

/// The values of every `attr="..."` on elements named `tag` in `dom`.
fn attrs<'a>(dom: &'a str, tag: &str, attr: &str) -> Vec<&'a str> {
    let open = format!("<{tag} ");
    let key = format!(" {attr}=\"");
    dom.match_indices(&open)
        .filter_map(|(i, _)| {
            let rest = dom.get(i..)?;
            let el = rest.get(..rest.find('>')?)?;
            let v = el.get(el.find(&key)? + key.len()..)?;
            v.get(..v.find('"')?)
        })
        .collect()
}

/// A decoded screenshot: width, height, RGB pixels.
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

fn decode(path: &Path) -> Image {
    let bytes = std::fs::read(path).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("the screenshot is a PNG");
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).expect("the PNG decodes");
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{info:?}");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let mut rgb = Vec::with_capacity(info.width as usize * info.height as usize);
    for row in buf.chunks(info.line_size).take(info.height as usize) {
        for px in row.chunks(channels).take(info.width as usize) {
            rgb.push([px[0], px[1], px[2]]);
        }
    }
    Image {
        width: info.width as usize,
        height: info.height as usize,
        rgb,
    }
}

impl Image {
    /// Pixels within `tol` (per channel) of `#rrggbb`.
    fn count_near(&self, hex: &str, tol: u8) -> usize {
        let c = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap();
        let want = [(c >> 16) as u8, (c >> 8) as u8, c as u8];
        self.rgb
            .iter()
            .filter(|p| (0..3).all(|i| p[i].abs_diff(want[i]) <= tol))
            .count()
    }

    /// Variance of the pixels' luminance (0 for a blank image).
    fn luminance_variance(&self) -> f64 {
        let lum: Vec<f64> = self
            .rgb
            .iter()
            .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
            .collect();
        let mean = lum.iter().sum::<f64>() / lum.len() as f64;
        lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lum.len() as f64
    }
}

#[test]
fn html_report_renders_its_charts_table_and_verdict_in_headless_chromium() {
    let browser = chromium();
    let (_mock, _gw, _mock_url, gw_url) = stack();
    let dir = scratch("report");
    let html = dir.join("report.html");
    let csv = dir.join("report");
    let scenario = scenarios().join("meetinity-gateway.toml");
    let ran = loadgen(&[
        "run",
        scenario.to_str().unwrap(),
        "--host",
        &gw_url,
        "--users",
        "10",
        "--spawn-rate",
        "10",
        "--run-time",
        "4s",
        "--only-summary",
        "--workers",
        "1",
        "--user-classes",
        "HighThroughputUser",
        "AuthenticatedUser",
        "--html",
        html.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--threshold",
        "error_rate<1%",
        "--threshold",
        "p99<5s",
    ]);
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);

    // The browser's DOM after parsing (the report has no script: charts are inline SVG).
    let dom = browse(&dir.join("profile-dom"), &html, &["--dump-dom"]);
    assert!(
        dom.contains("<title>loadgen report: "),
        "not the report: {dom:.300}"
    );
    assert!(!dom.contains("<script"), "the report is script-free");
    assert!(
        dom.contains(r#"<div class="verdict held" id="verdict">SLA HELD: 2 of 2 thresholds</div>"#),
        "verdict missing from the DOM"
    );
    assert_eq!(dom.matches("<svg ").count(), 4, "four charts");
    // Each chart's lines were parsed as SVG polylines with plotted points inside the
    // viewBox: requests/s + failures/s, users, p50/p95/p99, the distribution.
    let lines = attrs(&dom, "polyline", "points");
    assert_eq!(lines.len(), 7, "{lines:?}");
    for (i, pts) in lines.iter().enumerate() {
        let pts: Vec<(f64, f64)> = pts
            .split_whitespace()
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert!(pts.len() >= 2, "line {i} has {} points", pts.len());
        assert!(
            pts.iter()
                .all(|&(x, y)| (0.0..=560.0).contains(&x) && (0.0..=220.0).contains(&y)),
            "line {i} leaves its chart: {pts:?}"
        );
    }
    // The per-name table: a row for every name of the stats CSV, and the total.
    let stats = std::fs::read_to_string(dir.join("report_stats.csv")).unwrap();
    // `GET,/api/hello,12,...`: the second field (csv.writer quoting).
    let names: Vec<String> = csv::Reader::from_reader(stats.as_bytes())
        .records()
        .filter_map(|r| Some(r.ok()?.get(1)?.to_owned()))
        .collect();
    assert!(names.len() >= 3, "{stats}");
    for name in &names {
        assert!(
            dom.contains(&format!("<td>{name}</td>")),
            "no table row for {name}"
        );
    }
    assert!(dom.contains("<tr class=\"total\">"));

    // The rendering: a screenshot that is a real, non-blank image with the verdict's
    // background and the charts' colours in it.
    let shot = dir.join("report.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &dir.join("profile-shot"),
        &html,
        &[&format!("--screenshot={}", shot.display())],
    );
    eprintln!(
        "screenshot of the report ({}): {}",
        browser.display(),
        shot.display()
    );
    let img = decode(&shot);
    assert_eq!((img.width, img.height), (1280, 1800));
    let var = img.luminance_variance();
    eprintln!("screenshot luminance variance {var:.1}");
    assert!(var > 50.0, "blank screenshot (variance {var})");
    // The green verdict box (#c6f6d5) is a large solid area.
    let verdict = img.count_near("#c6f6d5", 2);
    assert!(verdict > 3000, "verdict box pixels {verdict}");
    // Lines drawn in each chart's colour, beyond their 10x10 legend squares: requests/s,
    // users, and the distribution.
    for color in ["#2b6cb0", "#2f855a", "#6b46c1"] {
        let n = img.count_near(color, 40);
        eprintln!("pixels near {color}: {n}");
        assert!(n > 250, "chart colour {color}: {n} pixels");
    }
}
