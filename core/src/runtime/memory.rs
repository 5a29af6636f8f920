//! Resident memory of this process, for reports (`train`, `bench`, `merge`) and for checking
//! the memory-budget planner's predictions.

/// Peak resident memory in MiB (Linux and Android: `VmHWM`); `None` where the OS does not say.
pub fn peak_rss_mb() -> Option<f64> {
    status_mib("VmHWM:")
}

/// Current resident memory in MiB (Linux and Android: `VmRSS`); `None` where the OS does not say.
pub fn rss_mb() -> Option<f64> {
    status_mib("VmRSS:")
}

fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}
