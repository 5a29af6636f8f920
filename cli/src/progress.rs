//! Progress bars on stderr, all in one style.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps: `label [=====>    ] pos/len unit, {msg} elapsed<eta`.
pub fn bar(label: &str, len: u64, unit: &str) -> ProgressBar {
    let template = format!("{label} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{msg}} {{elapsed}}<{{eta}}");
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    )
}

/// Prints `line` above `bar` (or plainly when the bar is hidden: stderr is not a terminal, and a
/// hidden bar drops what it is asked to print).
pub fn println(bar: &ProgressBar, line: &str) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}
