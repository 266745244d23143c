//! Process metrics read from `/proc/self` at scrape time (Linux; absent
//! elsewhere): CPU seconds, resident memory, open and maximum file
//! descriptors, start time.

use std::fmt::Write as _;

/// Appends the process families in OpenMetrics text.
pub fn write(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which may contain spaces) start at ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = clock_ticks();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After ')': state(0) ... utime(11) stime(12) ... starttime(19) ... rss(21).
    let cpu = (num(11) + num(12)) / ticks;
    let rss_pages = num(21);
    let page = 4096.0;
    let boot = boot_time();
    let _ = writeln!(
        out,
        "# HELP process_cpu_seconds Total user and system CPU time spent in seconds"
    );
    let _ = writeln!(out, "# TYPE process_cpu_seconds counter");
    let _ = writeln!(out, "process_cpu_seconds_total {cpu}");
    let _ = writeln!(
        out,
        "# HELP process_resident_memory_bytes Resident memory size in bytes"
    );
    let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
    let _ = writeln!(out, "process_resident_memory_bytes {}", rss_pages * page);
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Number of open file descriptors"
        );
        let _ = writeln!(out, "# TYPE process_open_fds gauge");
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
    if let Some(max) = max_fds() {
        let _ = writeln!(
            out,
            "# HELP process_max_fds Maximum number of open file descriptors"
        );
        let _ = writeln!(out, "# TYPE process_max_fds gauge");
        let _ = writeln!(out, "process_max_fds {max}");
    }
    if let Some(boot) = boot {
        let _ = writeln!(
            out,
            "# HELP process_start_time_seconds Start time of the process since the Unix epoch"
        );
        let _ = writeln!(out, "# TYPE process_start_time_seconds gauge");
        let _ = writeln!(out, "process_start_time_seconds {}", boot + num(19) / ticks);
    }
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux architecture we run on.
    100.0
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_this_process() {
        let mut s = String::new();
        super::write(&mut s);
        if cfg!(target_os = "linux") {
            let rss: f64 = s
                .lines()
                .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
                .unwrap()
                .parse()
                .unwrap();
            assert!(rss > 1_000_000.0, "{s}");
            assert!(s.contains("process_open_fds "));
            assert!(s.contains("process_cpu_seconds_total "));
        }
    }
}
