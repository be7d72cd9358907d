//! SVG plots for the reports: `aclshm tune --out-svg` (a scatter of the candidates) and
//! `aclshm bench --scaling --out` (line plots of measured costs against their ideals). One small writer,
//! no dependency: a title, two axes (linear, or log10 where the values span decades) with ticks and a
//! grid, the series, and a legend on the right.
//!
//! ```text
//!   +------------------------------------------------------------+
//!   |                         title                              |
//!   |      +-------------------------------------+               |
//!   |  1e3 |- - - - - - - - - - - - - - - - - - |  ── series a  |
//!   |   y  |            ___/                     |  - - ideal    |
//!   |  1e2 |- - - -___/- - - - - - - - - - - - - |  ●  points    |
//!   |      +-------------------------------------+               |
//!   |       1      10      100     1000  x                       |
//!   +------------------------------------------------------------+
//! ```
//!
//! Values that a log axis cannot place (zero, negative) and non-finite ones are left out of a series
//! rather than drawn off the plot; text is escaped, so any name or tooltip is safe to put in.

#![deny(unsafe_code)]

use std::fmt::Write;

/// How an axis maps values to positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// log10: equal ratios are equal distances.
    Log,
}

impl Scale {
    /// Log where the positive values span a decade or more and none is zero or negative; else linear.
    pub fn fitting(values: impl IntoIterator<Item = f64>) -> Scale {
        let (mut lo, mut hi, mut any) = (f64::INFINITY, 0.0f64, false);
        for v in values.into_iter().filter(|v| v.is_finite()) {
            if v <= 0.0 {
                return Scale::Linear;
            }
            (lo, hi, any) = (lo.min(v), hi.max(v), true);
        }
        if any && hi / lo >= 10.0 { Scale::Log } else { Scale::Linear }
    }
}

/// An axis: its label and scale; a linear axis may be made to start at zero (for costs, so that the eye
/// reads ratios right).
#[derive(Debug, Clone)]
pub struct Axis {
    pub label: String,
    pub scale: Scale,
    pub from_zero: bool,
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mark {
    /// A solid line through the points, each point a small dot.
    Line,
    /// A dashed line, no dots (ideals, references).
    Dashed,
    /// Dots of this radius, no line (a scatter).
    Dots(f64),
}

/// One series: its name (in the legend; empty: not listed), colour, mark and points; `tips` (as many as
/// the points, or none) are the points' tooltips.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub mark: Mark,
    pub points: Vec<(f64, f64)>,
    pub tips: Vec<String>,
}

/// A plot: title (and a smaller line under it, if any), axes, series drawn in order (the last on top).
#[derive(Debug, Clone)]
pub struct Plot {
    pub title: String,
    pub subtitle: String,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
}

/// Colours that stay apart on white and for most colour blindness (Okabe and Ito's).
pub const COLORS: [&str; 4] = ["#0072b2", "#e69f00", "#009e73", "#cc79a7"];

const WIDTH: f64 = 780.0;
const HEIGHT: f64 = 480.0;
/// The plotting area.
const LEFT: f64 = 80.0;
const RIGHT: f64 = 560.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 410.0;

/// `s` with the characters XML gives meaning to escaped.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An axis's range and ticks, in data units.
struct Ticks {
    lo: f64,
    hi: f64,
    at: Vec<f64>,
}

/// `v` with the digits a tick `step` apart needs, and no more (`1e6` and up in exponent form).
fn number(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() >= 1e6 || v.abs() < 1e-3 {
        let exp = v.abs().log10().floor();
        let mantissa = v / 10f64.powf(exp);
        return if (mantissa - mantissa.round()).abs() < 1e-9 {
            format!("{}e{exp}", mantissa.round())
        } else {
            format!("{mantissa:.1}e{exp}")
        };
    }
    let decimals = if step >= 1.0 { 0 } else { (-step.log10() - 1e-9).ceil() as usize };
    format!("{v:.decimals$}")
}

/// A step of 1, 2 or 5 times a power of ten that cuts `span` into about five.
fn nice_step(span: f64) -> f64 {
    let raw = span / 5.0;
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|&s| s >= raw).unwrap_or(10.0 * p)
}

fn ticks(values: &[f64], axis: &Axis) -> Ticks {
    match axis.scale {
        Scale::Log => {
            let (lo, hi) = values.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
            if !lo.is_finite() {
                return Ticks { lo: 1.0, hi: 10.0, at: vec![1.0, 10.0] };
            }
            // The range: from the 1, 2 or 5 times a power of ten at or below the least value to the one at
            // or above the largest (at least a factor of 2 wide).
            let steps = |e: i32| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e));
            let (e0, e1) = (lo.log10().floor() as i32, hi.log10().floor() as i32);
            let from = steps(e0).into_iter().rfind(|&v| v <= lo * (1.0 + 1e-9)).unwrap_or(10f64.powi(e0));
            let to = steps(e1)
                .into_iter()
                .chain([10f64.powi(e1 + 1)])
                .find(|&v| v >= hi * (1.0 - 1e-9))
                .unwrap_or(10f64.powi(e1 + 1))
                .max(from * 2.0);
            // Each power of ten inside, and 2 and 5 times it too where the range spans two decades or less.
            let few = to / from <= 100.0 * (1.0 + 1e-9);
            let inside = |v: f64| v >= from * (1.0 - 1e-9) && v <= to * (1.0 + 1e-9);
            let mut at: Vec<f64> = (e0..=e1 + 1)
                .flat_map(|e| if few { steps(e).to_vec() } else { vec![10f64.powi(e)] })
                .filter(|&v| inside(v))
                .collect();
            for end in [from, to] {
                if !at.iter().any(|&v| (v / end - 1.0).abs() < 1e-9) {
                    at.push(end);
                }
            }
            at.sort_by(f64::total_cmp);
            Ticks { lo: from, hi: to, at }
        }
        Scale::Linear => {
            let (mut lo, mut hi) =
                values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            if !lo.is_finite() {
                (lo, hi) = (0.0, 1.0);
            }
            if axis.from_zero {
                (lo, hi) = (lo.min(0.0), hi.max(0.0));
            }
            if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
                let pad = if hi == 0.0 { 1.0 } else { hi.abs() * 0.1 };
                (lo, hi) = (if axis.from_zero && lo >= 0.0 { lo } else { lo - pad }, hi + pad);
            }
            let step = nice_step(hi - lo);
            let (lo, hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
            let n = ((hi - lo) / step).round() as usize;
            Ticks { lo, hi, at: (0..=n).map(|i| lo + i as f64 * step).collect() }
        }
    }
}

/// A value's position between `lo` (0) and `hi` (1) on `scale`.
fn fraction(v: f64, t: &Ticks, scale: Scale) -> f64 {
    match scale {
        Scale::Log => (v.log10() - t.lo.log10()) / (t.hi.log10() - t.lo.log10()),
        Scale::Linear => (v - t.lo) / (t.hi - t.lo),
    }
}

/// Whether `v` can be placed on `scale`.
fn placeable(v: f64, scale: Scale) -> bool {
    v.is_finite() && (scale == Scale::Linear || v > 0.0)
}

/// `text` cut into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + word.chars().count() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

impl Plot {
    /// The plot as an SVG document.
    pub fn render(&self) -> String {
        let (xs, ys) = (self.x.scale, self.y.scale);
        let kept: Vec<Vec<(f64, f64, Option<&String>)>> = self
            .series
            .iter()
            .map(|s| {
                s.points
                    .iter()
                    .enumerate()
                    .filter(|&(_, &(x, y))| placeable(x, xs) && placeable(y, ys))
                    .map(|(i, &(x, y))| (x, y, s.tips.get(i)))
                    .collect()
            })
            .collect();
        let all = |f: fn(&(f64, f64, Option<&String>)) -> f64| kept.iter().flatten().map(f).collect::<Vec<f64>>();
        let (tx, ty) = (ticks(&all(|p| p.0), &self.x), ticks(&all(|p| p.1), &self.y));
        let px = |x: f64| LEFT + fraction(x, &tx, xs) * (RIGHT - LEFT);
        let py = |y: f64| BOTTOM - fraction(y, &ty, ys) * (BOTTOM - TOP);

        let mut out = String::new();
        let w = &mut out;
        // Writing to a String cannot fail.
        let _ = writeln!(
            w,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">"
        );
        let _ = writeln!(w, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let _ = writeln!(
            w,
            "<text x=\"{}\" y=\"28\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
            (LEFT + RIGHT) / 2.0,
            esc(&self.title)
        );
        if !self.subtitle.is_empty() {
            let _ = writeln!(
                w,
                "<text x=\"{}\" y=\"46\" text-anchor=\"middle\" font-size=\"11\" fill=\"#555555\">{}</text>",
                (LEFT + RIGHT) / 2.0,
                esc(&self.subtitle)
            );
        }
        // Grid and tick labels.
        for &x in &tx.at {
            let p = px(x);
            let _ = writeln!(
                w,
                "<line x1=\"{p:.1}\" y1=\"{TOP}\" x2=\"{p:.1}\" y2=\"{BOTTOM}\" stroke=\"#e4e4e4\"/>\n\
                 <text x=\"{p:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                BOTTOM + 16.0,
                number(x, tick_step(&tx, xs, x))
            );
        }
        for &y in &ty.at {
            let p = py(y);
            let _ = writeln!(
                w,
                "<line x1=\"{LEFT}\" y1=\"{p:.1}\" x2=\"{RIGHT}\" y2=\"{p:.1}\" stroke=\"#e4e4e4\"/>\n\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                LEFT - 6.0,
                p + 4.0,
                number(y, tick_step(&ty, ys, y))
            );
        }
        let _ = writeln!(
            w,
            "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>",
            RIGHT - LEFT,
            BOTTOM - TOP
        );
        let log = |s: Scale| if s == Scale::Log { " (log scale)" } else { "" };
        let _ = writeln!(
            w,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}{}</text>",
            (LEFT + RIGHT) / 2.0,
            BOTTOM + 40.0,
            esc(&self.x.label),
            log(xs)
        );
        let (lx, ly) = (22.0, (TOP + BOTTOM) / 2.0);
        let _ = writeln!(
            w,
            "<text x=\"{lx}\" y=\"{ly}\" transform=\"rotate(-90 {lx} {ly})\" text-anchor=\"middle\">{}{}</text>",
            esc(&self.y.label),
            log(ys)
        );
        // Series.
        for (s, points) in self.series.iter().zip(&kept) {
            let _ = writeln!(w, "<g>");
            let _ = writeln!(w, "<title>{}</title>", esc(&s.name));
            if matches!(s.mark, Mark::Line | Mark::Dashed) {
                let coords: Vec<String> =
                    points.iter().map(|&(x, y, _)| format!("{:.1},{:.1}", px(x), py(y))).collect();
                let dash = if s.mark == Mark::Dashed { " stroke-dasharray=\"6 4\"" } else { "" };
                let _ = writeln!(
                    w,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash}/>",
                    coords.join(" "),
                    s.color
                );
            }
            let radius = match s.mark {
                Mark::Line => Some(3.0),
                Mark::Dashed => None,
                Mark::Dots(r) => Some(r),
            };
            if let Some(r) = radius {
                for &(x, y, tip) in points {
                    let _ = write!(w, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r}\" fill=\"{}\"", px(x), py(y), s.color);
                    match tip {
                        Some(t) => {
                            let _ = writeln!(w, "><title>{}</title></circle>", esc(t));
                        }
                        None => {
                            let _ = writeln!(w, "/>");
                        }
                    }
                }
            }
            let _ = writeln!(w, "</g>");
        }
        // Legend.
        let mut y = TOP + 8.0;
        for s in self.series.iter().filter(|s| !s.name.is_empty()) {
            let x = RIGHT + 16.0;
            match s.mark {
                Mark::Dots(r) => {
                    let _ = writeln!(w, "<circle cx=\"{}\" cy=\"{y}\" r=\"{r}\" fill=\"{}\"/>", x + 12.0, s.color);
                }
                mark => {
                    let dash = if mark == Mark::Dashed { " stroke-dasharray=\"6 4\"" } else { "" };
                    let _ = writeln!(
                        w,
                        "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"2\"{dash}/>",
                        x + 24.0,
                        s.color
                    );
                }
            }
            for line in wrap(&s.name, 26) {
                let _ = writeln!(w, "<text x=\"{}\" y=\"{:.1}\">{}</text>", x + 32.0, y + 4.0, esc(&line));
                y += 15.0;
            }
            y += 8.0;
        }
        let _ = writeln!(w, "</svg>");
        out
    }
}

/// The step that decides how many digits the label of tick `v` needs.
fn tick_step(t: &Ticks, scale: Scale, v: f64) -> f64 {
    match scale {
        // Each label is a power of ten (or 2 or 5 times one): as many digits as its own magnitude needs.
        Scale::Log => v,
        Scale::Linear => t.at.windows(2).map(|w| w[1] - w[0]).next().unwrap_or(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plot(scale: Scale, points: Vec<(f64, f64)>) -> Plot {
        Plot {
            title: "a < b & \"c\"".into(),
            subtitle: String::new(),
            x: Axis { label: "x".into(), scale, from_zero: false },
            y: Axis { label: "y".into(), scale: Scale::Linear, from_zero: true },
            series: vec![
                Series { name: "measured".into(), color: COLORS[0], mark: Mark::Line, points, tips: vec![] },
                Series {
                    name: "ideal".into(),
                    color: "#777",
                    mark: Mark::Dashed,
                    points: vec![(1.0, 1.0), (1000.0, 2.0)],
                    tips: vec![],
                },
            ],
        }
    }

    #[test]
    fn scales_are_log_only_over_decades_of_positive_values() {
        assert_eq!(Scale::fitting([1.0, 2.0, 1024.0]), Scale::Log);
        assert_eq!(Scale::fitting([10.0, 99.0]), Scale::Linear);
        assert_eq!(Scale::fitting([0.0, 1.0, 16.0]), Scale::Linear);
        assert_eq!(Scale::fitting([f64::NAN, 1.0, 10.0]), Scale::Log);
        assert_eq!(Scale::fitting([]), Scale::Linear);
    }

    #[test]
    fn ticks_are_round_numbers_covering_the_values() {
        let lin = Axis { label: String::new(), scale: Scale::Linear, from_zero: true };
        let t = ticks(&[3.0, 47.0], &lin);
        assert_eq!((t.lo, t.hi), (0.0, 50.0));
        assert_eq!(t.at, [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]);
        let log = Axis { scale: Scale::Log, ..lin.clone() };
        let t = ticks(&[1.0, 1024.0], &log);
        assert_eq!((t.lo, t.hi), (1.0, 2000.0));
        assert_eq!(t.at, [1.0, 10.0, 100.0, 1000.0, 2000.0]);
        let t = ticks(&[0.3, 4.0], &log);
        assert_eq!(t.at, [0.2, 0.5, 1.0, 2.0, 5.0]);
        let t = ticks(&[1.0, 16.0], &log);
        assert_eq!(t.at, [1.0, 2.0, 5.0, 10.0, 20.0]);
        // One value: still a range around it.
        let t = ticks(&[100.0, 100.0], &log);
        assert_eq!((t.lo, t.hi), (100.0, 200.0));
        // One value: a range around it, not a division by zero.
        let t = ticks(&[5.0, 5.0], &Axis { from_zero: false, ..lin });
        assert!(t.lo < 5.0 && t.hi > 5.0, "{}..{}", t.lo, t.hi);
        assert_eq!(number(0.5, 0.1), "0.5");
        assert_eq!(number(20.0, 10.0), "20");
        assert_eq!(number(2e6, 1e6), "2e6");
        assert_eq!(number(0.02, 0.01), "0.02");
    }

    #[test]
    fn a_plot_is_one_svg_document_with_a_line_per_series_and_escaped_text() {
        let svg = plot(Scale::Log, vec![(1.0, 1.5), (32.0, 1.8), (1024.0, 2.5)]).render();
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt; b &amp; &quot;c&quot;") && !svg.contains("a < b"));
        assert!(svg.contains("(log scale)"));
        // Every element opened is closed or self-closing: tags balance.
        for tag in ["svg", "g", "text", "title"] {
            assert_eq!(
                svg.matches(&format!("<{tag}>")).count() + svg.matches(&format!("<{tag} ")).count(),
                svg.matches(&format!("</{tag}>")).count(),
                "{tag}"
            );
        }
    }

    #[test]
    fn points_a_log_axis_cannot_place_are_left_out() {
        let svg = plot(Scale::Log, vec![(0.0, 1.0), (-1.0, 1.0), (f64::NAN, 1.0), (4.0, 2.0)]).render();
        let line = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        assert_eq!(line.matches(',').count(), 1, "{line}");
        // Nothing placed at all still renders.
        let empty = Plot { series: vec![], ..plot(Scale::Linear, vec![]) }.render();
        assert!(empty.starts_with("<svg") && !empty.contains("NaN"));
    }

    #[test]
    fn long_names_wrap_at_spaces() {
        assert_eq!(wrap("Mirror attach + close, pid-validated", 20), ["Mirror attach +", "close, pid-validated"]);
        assert_eq!(wrap("", 10), Vec::<String>::new());
    }
}
