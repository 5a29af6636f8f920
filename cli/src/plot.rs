//! `train --plot FILE.svg`: the loss curve as a self-contained SVG (training loss per step,
//! held-out and general-text loss at each evaluation), written atomically.

use std::fmt::Write as _;
use std::path::Path;

use crate::CliError;

const WIDTH: f32 = 720.0;
const HEIGHT: f32 = 400.0;
/// Plot area inside the margins (left, top, right, bottom).
const AREA: (f32, f32, f32, f32) = (64.0, 36.0, 700.0, 350.0);

/// One named curve: (step, loss) points, drawn as a line (`markers = false`) or as dots.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f32, f32)>,
    pub markers: bool,
}

/// Writes `series` to `path` as SVG.
pub fn write_svg(path: &Path, title: &str, series: &[Series]) -> Result<(), CliError> {
    let svg = render(title, series);
    let tmp = path.with_extension("svg.tmp");
    std::fs::write(&tmp, svg)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| CliError::io(path, e))
}

fn render(title: &str, series: &[Series]) -> String {
    let points = || series.iter().flat_map(|s| s.points.iter()).filter(|(_, y)| y.is_finite());
    let (x_max, mut y_min, mut y_max) = points()
        .fold((1f32, f32::INFINITY, f32::NEG_INFINITY), |(x, lo, hi), &(px, py)| {
            (x.max(px), lo.min(py), hi.max(py))
        });
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let (y_lo, y_hi) = ((y_min - pad).max(0.0), y_max + pad);
    let (left, top, right, bottom) = AREA;
    let x_of = |x: f32| left + x / x_max * (right - left);
    let y_of = |y: f32| bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top);

    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>
<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#888"/>
"##,
        WIDTH / 2.0,
        escape(title),
        right - left,
        bottom - top
    );
    for i in 0..=5 {
        let y = y_lo + (y_hi - y_lo) * i as f32 / 5.0;
        let (sx, sy) = (left, y_of(y));
        let _ = writeln!(
            svg,
            r##"<line x1="{sx}" y1="{sy:.1}" x2="{right}" y2="{sy:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{y:.2}</text>"##,
            sx - 6.0,
            sy + 4.0
        );
        let step = (x_max * i as f32 / 5.0).round();
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{step}</text>"#,
            x_of(step),
            bottom + 18.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">step</text><text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">loss (nats/token)</text>"#,
        (left + right) / 2.0,
        bottom + 40.0,
        (top + bottom) / 2.0,
        (top + bottom) / 2.0
    );
    for (i, s) in series.iter().enumerate() {
        let finite: Vec<_> = s.points.iter().filter(|(_, y)| y.is_finite()).collect();
        if s.markers {
            for (x, y) in &finite {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"/>"#,
                    x_of(*x),
                    y_of(*y),
                    s.color
                );
            }
        } else {
            let path: Vec<String> =
                finite.iter().map(|(x, y)| format!("{:.1},{:.1}", x_of(*x), y_of(*y))).collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                s.color,
                path.join(" ")
            );
        }
        let ly = top + 16.0 + 16.0 * i as f32;
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{:.1}" width="12" height="3" fill="{}"/><text x="{}" y="{:.1}">{}</text>"#,
            right - 170.0,
            ly - 4.0,
            s.color,
            right - 152.0,
            ly,
            escape(s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finite_point_is_drawn_inside_the_plot_area() {
        let series = [
            Series {
                name: "train",
                color: "red",
                points: vec![(1.0, 4.0), (2.0, f32::NAN), (3.0, 2.0)],
                markers: false,
            },
            Series {
                name: "held-out <eval>",
                color: "blue",
                points: vec![(0.0, 4.5), (3.0, 2.5)],
                markers: true,
            },
        ];
        let svg = render("loss", &series);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("held-out &lt;eval&gt;"));
        assert_eq!(svg.matches("<circle").count(), 2);
        let line = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        let points: Vec<(f32, f32)> = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches("\"/>")
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(points.len(), 2, "the NaN point is skipped");
        let (left, top, right, bottom) = AREA;
        assert!(points.iter().all(|&(x, y)| (left..=right).contains(&x) && (top..=bottom).contains(&y)));
        assert!(points[0].1 < points[1].1, "a higher loss is drawn nearer the top");
    }
}
