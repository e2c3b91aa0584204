//! Minimal SVG charts for reports (no plotting dependency): a histogram and a line chart.

use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 400.0;
const PAD: f64 = 56.0;

fn frame(title: &str, x_label: &str, y_label: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="14" y="{}" text-anchor="middle" transform="rotate(-90 14 {})">{}</text>
<line x1="{PAD}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{}" stroke="black"/>
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

fn ticks(s: &mut String, x0: f64, x1: f64, y0: f64, y1: f64) {
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let (x, y) = (PAD + f * (W - 1.5 * PAD), H - PAD - f * (H - 2.0 * PAD));
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{:.3}</text>"#,
            H - PAD + 16.0,
            x0 + f * (x1 - x0)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{y:.1}" text-anchor="end">{:.3}</text>"#,
            PAD - 4.0,
            y0 + f * (y1 - y0)
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
    ticks(&mut s, lo, hi, 0.0, max);
    let bw = (W - 1.5 * PAD) / bins as f64;
    for (i, &c) in counts.iter().enumerate() {
        let h = c as f64 / max * (H - 2.0 * PAD);
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#4878a8" stroke="white"/>"##,
            PAD + i as f64 * bw,
            H - PAD - h,
            bw
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A line chart of `ys` against `xs`, with points.
pub fn line_svg(xs: &[f64], ys: &[f64], title: &str, x_label: &str, y_label: &str) -> String {
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
    let px = |x: f64| PAD + (x - x0) / (x1 - x0) * (W - 1.5 * PAD);
    let py = |y: f64| H - PAD - (y - y0) / (y1 - y0) * (H - 2.0 * PAD);
    let mut s = frame(title, x_label, y_label);
    ticks(&mut s, x0, x1, y0, y1);
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
        let l =
            super::line_svg(&[1.0, 2.0, 3.0], &[0.5, 0.2, 0.6], "std by bucket", "bucket", "std");
        assert_eq!(l.matches("<circle").count(), 3);
    }
}
