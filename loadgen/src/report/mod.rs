//! Every output of a run or a merge: the terminal table ([`table`]), Locust-compatible CSV
//! files ([`csv`]), the k6-style JSON summary ([`json`]), the self-contained HTML report
//! ([`html`]), JUnit XML of the SLA checks ([`junit`]) and the result file that
//! `loadgen merge` reads. All of them say when the run was unreliable.

pub mod csv;
pub mod html;
pub mod json;
pub mod junit;
pub mod table;

use std::path::{Path, PathBuf};

use crate::metrics::RunResult;
use crate::sla::Verdict;

/// Escapes text for HTML and XML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Which files to write.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// `--csv PREFIX`.
    pub csv: Option<PathBuf>,
    /// `--html FILE`.
    pub html: Option<PathBuf>,
    /// `--summary-export FILE`.
    pub summary: Option<PathBuf>,
    /// `--junit FILE`.
    pub junit: Option<PathBuf>,
    /// `--result FILE` (for `loadgen merge`).
    pub result: Option<PathBuf>,
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes every requested file.
pub fn write_all(result: &RunResult, verdicts: &[Verdict], out: &Outputs) -> Result<(), String> {
    if let Some(prefix) = &out.csv {
        if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        csv::write(result, prefix)?;
    }
    if let Some(path) = &out.html {
        write_file(path, &html::render(result, verdicts))?;
    }
    if let Some(path) = &out.summary {
        let doc = json::render(result, verdicts);
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        write_file(path, &text)?;
    }
    if let Some(path) = &out.junit {
        write_file(path, &junit::render(result, verdicts))?;
    }
    if let Some(path) = &out.result {
        let text = serde_json::to_string(result).map_err(|e| e.to_string())?;
        write_file(path, &text)?;
    }
    Ok(())
}
