//! Minimal SVG charts for reports (no plotting dependency): a histogram and a line chart.

use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 400.0;
const PAD: f64 = 56.0;
/// Left margin: room for the tick labels and, left of them, the rotated y label.
const LEFT: f64 = 76.0;
/// Plot area: x in [LEFT, W - PAD / 2], y in [PAD, H - PAD].
const PLOT_W: f64 = W - LEFT - PAD / 2.0;
const PLOT_H: f64 = H - 2.0 * PAD;

/// An axis' value range; `integer` axes (counts, bucket indices) get whole-number ticks.
#[derive(Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
    integer: bool,
}

impl Axis {
    /// Ticks at multiples of a 1-2-5 step inside [lo, hi], about five, and the decimals
    /// their labels need.
    fn ticks(&self) -> (Vec<f64>, usize) {
        let span = (self.hi - self.lo).max(f64::MIN_POSITIVE);
        let raw = span / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let mut step =
            [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|&s| s >= raw).unwrap_or(10.0 * mag);
        if self.integer {
            step = step.max(1.0).round();
        }
        let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
        let first = (self.lo / step).ceil() as i64;
        let last = (self.hi / step + 1e-9).floor() as i64;
        ((first..=last).map(|k| k as f64 * step).collect(), decimals)
    }
}

fn frame(title: &str, x_label: &str, y_label: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>
<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{LEFT}" y1="{PAD}" x2="{LEFT}" y2="{}" stroke="black"/>
"#,
        W / 2.0,
        escape(title),
        W / 2.0,
        H - 10.0,
        escape(x_label),
        H / 2.0,
        H / 2.0,
        escape(y_label),
        H - PAD,
        W - PAD / 2.0,
        H - PAD,
        H - PAD
    );
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Tick marks and labels on both axes.
fn ticks(s: &mut String, x: Axis, y: Axis) {
    let (xt, xd) = x.ticks();
    for v in xt {
        let px = LEFT + (v - x.lo) / (x.hi - x.lo) * PLOT_W;
        let _ = writeln!(
            s,
            r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="black"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{v:.xd$}</text>"#,
            H - PAD,
            H - PAD + 4.0,
            H - PAD + 18.0
        );
    }
    let (yt, yd) = y.ticks();
    for v in yt {
        let py = H - PAD - (v - y.lo) / (y.hi - y.lo) * PLOT_H;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{py:.1}" x2="{LEFT}" y2="{py:.1}" stroke="black"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.yd$}</text>"#,
            LEFT - 4.0,
            LEFT - 6.0,
            py + 4.0
        );
    }
}

/// A histogram of `values` in `bins` equal-width bins.
pub fn histogram_svg(values: &[f32], bins: usize, title: &str, x_label: &str) -> String {
    let bins = bins.max(1);
    let (lo, hi) =
        values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo.is_finite() && hi > lo { (lo as f64, hi as f64) } else { (0.0, 1.0) };
    let mut counts = vec![0usize; bins];
    for &v in values {
        let b = (((v as f64 - lo) / (hi - lo)) * bins as f64) as usize;
        counts[b.min(bins - 1)] += 1;
    }
    let max = *counts.iter().max().unwrap_or(&1).max(&1) as f64;
    let mut s = frame(title, x_label, "pairs");
    ticks(&mut s, Axis { lo, hi, integer: false }, Axis { lo: 0.0, hi: max, integer: true });
    let bw = PLOT_W / bins as f64;
    for (i, &c) in counts.iter().enumerate() {
        let h = c as f64 / max * PLOT_H;
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#4878a8" stroke="white"/>"##,
            LEFT + i as f64 * bw,
            H - PAD - h,
            bw
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A line chart of `ys` against `xs`, with points; `integer_x` for an axis of whole numbers
/// (bucket indices, steps).
pub fn line_svg(
    xs: &[f64],
    ys: &[f64],
    title: &str,
    x_label: &str,
    y_label: &str,
    integer_x: bool,
) -> String {
    let range = |v: &[f64]| {
        let (a, b) =
            v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        if a.is_finite() && b > a {
            (a, b)
        } else {
            (a.min(0.0), a.max(0.0) + 1.0)
        }
    };
    let ((x0, x1), (y0, y1)) = (range(xs), range(ys));
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * PLOT_W;
    let py = |y: f64| H - PAD - (y - y0) / (y1 - y0) * PLOT_H;
    let mut s = frame(title, x_label, y_label);
    ticks(
        &mut s,
        Axis { lo: x0, hi: x1, integer: integer_x },
        Axis { lo: y0, hi: y1, integer: false },
    );
    let points: Vec<String> =
        xs.iter().zip(ys).map(|(&x, &y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#c44e52" stroke-width="2"/>"##,
        points.join(" ")
    );
    for (&x, &y) in xs.iter().zip(ys) {
        let _ =
            writeln!(s, r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#c44e52"/>"##, px(x), py(y));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn charts_are_well_formed_svg() {
        let h = super::histogram_svg(&[0.0, 1.0, 1.0, 2.0, -3.5], 4, "strength", "mean <diff>");
        assert!(h.starts_with("<svg") && h.trim_end().ends_with("</svg>"));
        assert_eq!(h.matches("<rect").count(), 1 + 4);
        assert!(h.contains("mean &lt;diff&gt;"));
        let l = super::line_svg(
            &[1.0, 2.0, 3.0],
            &[0.5, 0.2, 0.6],
            "std by bucket",
            "bucket",
            "std",
            true,
        );
        assert_eq!(l.matches("<circle").count(), 3);
    }

    /// Count and index axes get whole-number ticks; fractional axes 1-2-5 steps with the
    /// decimals the step needs (not 105.250 / 2.250).
    #[test]
    fn ticks_are_round_numbers() {
        use super::Axis;
        let (t, d) = Axis { lo: 0.0, hi: 421.0, integer: true }.ticks();
        assert_eq!((t, d), (vec![0.0, 100.0, 200.0, 300.0, 400.0], 0));
        let (t, d) = Axis { lo: 0.0, hi: 9.0, integer: true }.ticks();
        assert_eq!((t, d), (vec![0.0, 2.0, 4.0, 6.0, 8.0], 0));
        let (t, d) = Axis { lo: 0.0, hi: 3.0, integer: true }.ticks();
        assert_eq!((t, d), (vec![0.0, 1.0, 2.0, 3.0], 0));
        let (t, d) = Axis { lo: -0.73, hi: 1.11, integer: false }.ticks();
        assert_eq!(d, 1);
        assert_eq!(t.len(), 4, "{t:?}"); // -0.5, 0, 0.5, 1.0
        assert!(t.iter().all(|v| (v * 2.0 - (v * 2.0).round()).abs() < 1e-9));
        let (_, d) = Axis { lo: 0.17, hi: 0.33, integer: false }.ticks();
        assert_eq!(d, 2);
    }
}
