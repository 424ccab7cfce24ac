//! The charts of `--report`, drawn as SVG text with plotters: goodput per system, bytes
//! delivered over time to healthy and stalled consumers, and latency percentiles per system.
//!
//! Invariants: every chart has a title, axes named with their units and, when it shows more
//! than one thing, a legend or a label on each bar; text stays SVG `<text>` (no font is
//! rasterised, so no system font library is needed); drawing never panics on empty or zero
//! figures: an axis whose figures are all zero still spans a unit range.

use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::RangedCoordusize;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::super::timeline::Point;

/// One line of the delivered chart: which consumers, how many, its colour, its figure.
type Line = (&'static str, u64, RGBColor, fn(&Point) -> u64);

/// Size of every chart, in pixels.
const SIZE: (u32, u32) = (1000, 560);

/// The font of every text.
const FONT: &str = "sans-serif";

/// plexus's colour; the other systems take [`OTHERS`] in turn.
const PLEXUS: RGBColor = RGBColor(31, 119, 180);

/// Colours of the other systems.
const OTHERS: [RGBColor; 4] = [
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Healthy consumers' line.
const HEALTHY: RGBColor = RGBColor(31, 119, 180);

/// Stalled consumers' line.
const STALLED: RGBColor = RGBColor(214, 39, 40);

/// One system's goodput.
#[derive(Clone, Debug)]
pub struct Bar {
    /// The system's name.
    pub system: String,
    /// Payload bytes delivered per second.
    pub bytes_per_s: f64,
    /// Messages delivered per second.
    pub msgs_per_s: f64,
    /// The system's run verified.
    pub verified: bool,
}

/// One system's latency percentiles, in µs (`None`: not measured).
#[derive(Clone, Debug)]
pub struct Percentiles {
    /// The system's name.
    pub system: String,
    /// p50, p99, p99.9 and max.
    pub us: [Option<f64>; 4],
}

/// The names of [`Percentiles::us`]'s figures.
const PERCENTILES: [&str; 4] = ["p50", "p99", "p99.9", "max"];

/// The unit to show `max` bytes in, and its size in bytes.
pub fn byte_unit(max: f64) -> (&'static str, f64) {
    const UNITS: [(&str, f64); 4] = [
        ("GiB", 1024.0 * 1024.0 * 1024.0),
        ("MiB", 1024.0 * 1024.0),
        ("KiB", 1024.0),
        ("B", 1.0),
    ];
    UNITS
        .into_iter()
        .find(|&(_, size)| max >= size)
        .unwrap_or(("B", 1.0))
}

/// `n` categories (at least one), each a segment of the axis.
///
/// plotters' integer ranges include their end, so `0..n - 1` holds n values.
fn categories(n: usize) -> SegmentedCoord<RangedCoordusize> {
    (0..n.max(1) - 1).into_segmented()
}

/// Where segment `i` of `n` [`categories`] ends (the last one at the axis's end: with a
/// single category, `Exact(1)` would map to its start).
fn segment_end(i: usize, n: usize) -> SegmentValue<usize> {
    if i + 1 >= n {
        SegmentValue::Last
    } else {
        SegmentValue::Exact(i + 1)
    }
}

/// An axis label: whole numbers without decimals, others with at most two.
fn tick(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// A number short enough for a label: whole numbers from 100 up, three significant digits
/// below.
fn short(value: f64) -> String {
    if value >= 100.0 || value == 0.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Draws on an SVG of [`SIZE`] and returns its text.
fn svg(
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), String>,
) -> Result<String, String> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(text)
}

/// Goodput per system: bytes per second on the left, messages per second on the right,
/// each bar labelled with its figure.
pub fn goodput(bars: &[Bar]) -> Result<String, String> {
    svg(|root| {
        let root = root
            .titled(
                "Goodput per system (verified payload delivered, higher is better)",
                (FONT, 24),
            )
            .map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(SIZE.0 / 2);
        let max_bytes = bars.iter().map(|b| b.bytes_per_s).fold(0.0, f64::max);
        let (unit, size) = byte_unit(max_bytes);
        let bytes: Vec<f64> = bars.iter().map(|b| b.bytes_per_s / size).collect();
        let msgs: Vec<f64> = bars.iter().map(|b| b.msgs_per_s).collect();
        bar_panel(&left, "Bytes", &format!("goodput ({unit}/s)"), bars, &bytes)?;
        bar_panel(&right, "Messages", "messages per second", bars, &msgs)
    })
}

/// One figure per system, a bar each, labelled with its value, under `title`, the value
/// axis named `y_desc`.
pub fn column(title: &str, y_desc: &str, bars: &[Bar], values: &[f64]) -> Result<String, String> {
    svg(|root| {
        let root = root.titled(title, (FONT, 24)).map_err(|e| e.to_string())?;
        bar_panel(&root, "", y_desc, bars, values)
    })
}

/// The legend of a line chart, in its upper left corner.
fn draw_legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// One bar per system on `area`, with `values` (in the unit `y_desc` names).
fn bar_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    caption: &str,
    y_desc: &str,
    bars: &[Bar],
    values: &[f64],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let top = values.iter().copied().fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(categories(bars.len()), 0.0..top)
        .map_err(err)?;
    let name = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => bars.get(*i).map_or(String::new(), |b| {
            if b.verified {
                b.system.clone()
            } else {
                format!("{} (NOT verified)", b.system)
            }
        }),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .disable_x_mesh()
        .x_desc("system")
        .y_desc(y_desc)
        .x_label_formatter(&name)
        .y_label_formatter(&|v| tick(*v))
        .axis_desc_style((FONT, 15))
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    let colours = colours(bars.iter().map(|b| b.system.as_str()));
    chart
        .draw_series(bars.iter().zip(values).enumerate().map(|(i, (_, &v))| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (segment_end(i, bars.len()), v),
                ],
                colours[i].filled(),
            );
            bar.set_margin(0, 0, 18, 18);
            bar
        }))
        .map_err(err)?;
    let label = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(values.iter().enumerate().map(|(i, &v)| {
            // A few pixels above the bar's top.
            EmptyElement::at((SegmentValue::CenterOf(i), v))
                + Text::new(short(v), (0, -4), label.clone())
        }))
        .map_err(err)?;
    Ok(())
}

/// A colour per system: plexus's own, the others in turn.
fn colours<'a>(systems: impl Iterator<Item = &'a str>) -> Vec<RGBColor> {
    let mut others = OTHERS.iter().cycle();
    systems
        .map(|s| {
            if s == "plexus" {
                PLEXUS
            } else {
                others.next().copied().unwrap_or(BLACK)
            }
        })
        .collect()
}

/// What [`delivered`] draws.
#[derive(Clone, Debug)]
pub struct Delivery<'a> {
    /// The samples.
    pub points: &'a [Point],
    /// Consumers that did not stall.
    pub healthy_consumers: u64,
    /// Consumers that stalled (no stalled line without them).
    pub stalled_consumers: u64,
    /// When the stalled consumers were released, in ms since the start, if they were.
    pub released_ms: Option<f64>,
}

/// Cumulative bytes delivered over time: the healthy consumers' sum and, with stalled
/// consumers, theirs; a vertical line marks the release of the stalled consumers.
pub fn delivered(d: &Delivery) -> Result<String, String> {
    svg(|root| {
        let err = |e: DrawingAreaErrorKind<_>| e.to_string();
        let t_max = d.points.last().map_or(0.0, |p| p.t_ms).max(1.0);
        let max = d
            .points
            .iter()
            .map(|p| p.healthy.max(p.stalled))
            .max()
            .unwrap_or(0) as f64;
        let (unit, size) = byte_unit(max);
        let top = (max / size * 1.08).max(1.0);
        let title = if d.stalled_consumers > 0 {
            "Bytes delivered over time: healthy vs stalled consumers"
        } else {
            "Bytes delivered over time"
        };
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 24))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..t_max, 0.0..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .x_desc("time since start (ms)")
            .y_desc(format!("cumulative bytes delivered ({unit})"))
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        let line = |pick: fn(&Point) -> u64| {
            d.points
                .iter()
                .map(move |p| (p.t_ms, pick(p) as f64 / size))
                .collect::<Vec<_>>()
        };
        let legend = |colour: RGBColor| {
            move |(x, y): (i32, i32)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3))
            }
        };
        let kinds: [Line; 2] = [
            ("healthy", d.healthy_consumers, HEALTHY, |p| p.healthy),
            ("stalled", d.stalled_consumers, STALLED, |p| p.stalled),
        ];
        for (i, (kind, consumers, colour, pick)) in kinds.into_iter().enumerate() {
            // The healthy line is always drawn; the stalled one when there are any.
            if i > 0 && consumers == 0 {
                continue;
            }
            chart
                .draw_series(LineSeries::new(line(pick), colour.stroke_width(3)))
                .map_err(err)?
                .label(format!("{kind} consumers ({consumers}, summed)"))
                .legend(legend(colour));
        }
        if let Some(at) = d.released_ms.filter(|_| d.stalled_consumers > 0) {
            let grey = RGBColor(120, 120, 120);
            chart
                .draw_series(DashedLineSeries::new(
                    [(at, 0.0), (at, top)],
                    6,
                    4,
                    grey.stroke_width(2),
                ))
                .map_err(err)?
                .label("stalled consumers released (healthy ones done)")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], grey.stroke_width(2))
                });
        }
        draw_legend(&mut chart)
    })
}

/// One-way latency by percentile, one line per system, on a logarithmic axis.
pub fn latency(systems: &[Percentiles]) -> Result<String, String> {
    svg(|root| {
        let err = |e: DrawingAreaErrorKind<_>| e.to_string();
        let values = systems.iter().flat_map(|s| s.us.iter().flatten().copied());
        let (low, high) = values.fold((f64::MAX, 0.0_f64), |(l, h), v| (l.min(v), h.max(v)));
        let (low, high) = if high > 0.0 {
            ((low / 2.0).max(0.1), high * 2.0)
        } else {
            (1.0, 10.0)
        };
        let mut chart = ChartBuilder::on(root)
            .caption(
                "One-way latency by percentile (lower is better)",
                (FONT, 24),
            )
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(categories(PERCENTILES.len()), (low..high).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .disable_x_mesh()
            .x_desc("percentile")
            .y_desc("one-way latency (µs, log scale)")
            .y_labels(12)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => PERCENTILES.get(*i).map_or("", |p| p).to_string(),
                _ => String::new(),
            })
            .y_label_formatter(&|v| tick(*v))
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        let colours = colours(systems.iter().map(|s| s.system.as_str()));
        for (index, (system, &colour)) in systems.iter().zip(&colours).enumerate() {
            // Labels above the points of every other system, below those of the rest, so
            // that close figures of two systems do not overwrite each other.
            let (v_pos, dy) = if index % 2 == 0 {
                (VPos::Bottom, -8)
            } else {
                (VPos::Top, 8)
            };
            let label = TextStyle::from((FONT, 13).into_font())
                .color(&colour)
                .pos(Pos::new(HPos::Left, v_pos));
            let points: Vec<(SegmentValue<usize>, f64)> = system
                .us
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (SegmentValue::CenterOf(i), v)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(3)))
                .map_err(err)?
                .label(system.system.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3))
                });
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new(p.clone(), 5, colour.filled())),
                )
                .map_err(err)?;
            chart
                .draw_series(points.iter().map(|(x, v)| {
                    // Beside the point, clear of its marker.
                    EmptyElement::at((x.clone(), *v))
                        + Text::new(format!("{} µs", short(*v)), (10, dy), label.clone())
                }))
                .map_err(err)?;
        }
        draw_legend(&mut chart)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of every `<text>` element of `svg`.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let start = t.find('>')? + 1;
                let end = t.find("</text>")?;
                Some(t[start..end].trim().to_string())
            })
            .collect()
    }

    /// The number of points of every `<polyline>` of `svg` stroked in `colour`.
    fn lines(svg: &str, colour: &str) -> Vec<usize> {
        svg.split("<polyline")
            .skip(1)
            .filter(|p| p.contains(&format!("stroke=\"{colour}\"")))
            .filter_map(|p| {
                let points = p.split("points=\"").nth(1)?.split('"').next()?;
                Some(points.split_whitespace().count())
            })
            .collect()
    }

    #[test]
    fn units_fit_the_largest_figure() {
        assert_eq!(byte_unit(0.0), ("B", 1.0));
        assert_eq!(byte_unit(1023.0), ("B", 1.0));
        assert_eq!(byte_unit(1024.0), ("KiB", 1024.0));
        assert_eq!(byte_unit(5.0 * 1024.0 * 1024.0).0, "MiB");
        assert_eq!(byte_unit(3e9).0, "GiB");
        assert_eq!(
            (short(0.0), short(1.234), short(12.34), short(1234.5)),
            ("0".into(), "1.23".into(), "12.3".into(), "1234".into())
        );
    }

    #[test]
    fn axis_labels_drop_needless_decimals() {
        let labels: Vec<String> = [0.0, 20.0, 2.5, 0.126, 1e-9, -0.0001].map(tick).into();
        assert_eq!(labels, ["0", "20", "2.5", "0.13", "0", "0"]);
    }

    #[test]
    fn n_categories_split_the_axis_in_n_equal_segments() {
        for n in [1usize, 2, 5] {
            let axis = categories(n);
            let width = 1000;
            let segment = width / i32::try_from(n).expect("small");
            // The first bar starts at the left end, the last one ends at the right end.
            assert_eq!(axis.map(&SegmentValue::Exact(0), (0, width)), 0, "{n}");
            let end = axis.map(&segment_end(n - 1, n), (0, width));
            assert_eq!(end, width, "{n}");
            if n > 1 {
                let second = axis.map(&segment_end(0, n), (0, width));
                assert_eq!(second, segment, "{n}");
            }
            assert_eq!(
                axis.map(&SegmentValue::CenterOf(0), (0, width)),
                segment / 2,
                "{n}"
            );
        }
    }

    #[test]
    fn goodput_has_a_bar_and_a_label_per_system() {
        let bars = [
            Bar {
                system: "plexus".into(),
                bytes_per_s: 500.0 * 1048576.0,
                msgs_per_s: 16000.0,
                verified: true,
            },
            Bar {
                system: "raw-tcp".into(),
                bytes_per_s: 600.0 * 1048576.0,
                msgs_per_s: 19200.0,
                verified: false,
            },
        ];
        let svg = goodput(&bars).expect("chart");
        assert!(svg.trim_start().starts_with("<svg"), "{svg:.100}");
        let texts = texts(&svg);
        for expected in [
            "plexus",
            "raw-tcp (NOT verified)",
            "goodput (MiB/s)",
            "messages per second",
            "500",
            "19200",
        ] {
            assert!(
                texts.iter().any(|t| t == expected),
                "no text {expected:?} in {texts:?}"
            );
        }
        // Two panels of two bars, plus the backgrounds.
        assert!(svg.matches("<rect").count() >= 4);
    }

    #[test]
    fn delivered_draws_one_line_per_class_and_a_legend() {
        let points: Vec<Point> = (0u32..50)
            .map(|i| Point {
                t_ms: f64::from(i) * 10.0,
                healthy: u64::from(i) << 20,
                stalled: u64::from(i.saturating_sub(40)) << 20,
            })
            .collect();
        let chart = |stalled| {
            delivered(&Delivery {
                points: &points,
                healthy_consumers: 5,
                stalled_consumers: stalled,
                released_ms: Some(400.0),
            })
            .expect("chart")
        };
        let with = chart(1);
        let texts_with = texts(&with);
        assert!(texts_with.iter().any(|t| t == "time since start (ms)"));
        assert!(texts_with
            .iter()
            .any(|t| t == "cumulative bytes delivered (MiB)"));
        assert!(texts_with
            .iter()
            .any(|t| t.starts_with("healthy consumers (5")));
        assert!(texts_with
            .iter()
            .any(|t| t.starts_with("stalled consumers (1")));
        // Each line is one polyline through every point, and one more in the legend.
        assert_eq!(lines(&with, "#1F77B4"), [50, 2]);
        assert_eq!(lines(&with, "#D62728"), [50, 2]);
        let without = chart(0);
        assert!(!texts(&without).iter().any(|t| t.starts_with("stalled")));
        assert_eq!(lines(&without, "#1F77B4"), [50, 2]);
        assert!(lines(&without, "#D62728").is_empty());
    }

    #[test]
    fn empty_or_zero_figures_still_draw() {
        assert!(goodput(&[]).is_ok());
        let zero = [Bar {
            system: "plexus".into(),
            bytes_per_s: 0.0,
            msgs_per_s: 0.0,
            verified: false,
        }];
        assert!(goodput(&zero).is_ok());
        let none = Delivery {
            points: &[],
            healthy_consumers: 1,
            stalled_consumers: 0,
            released_ms: None,
        };
        assert!(delivered(&none).is_ok());
        assert!(latency(&[Percentiles {
            system: "plexus".into(),
            us: [None; 4]
        }])
        .is_ok());
    }

    #[test]
    fn latency_has_a_line_and_labels_per_system() {
        let systems = [
            Percentiles {
                system: "plexus".into(),
                us: [Some(80.0), Some(300.0), Some(900.0), Some(4000.0)],
            },
            Percentiles {
                system: "raw-tcp".into(),
                us: [Some(40.0), Some(150.0), Some(500.0), None],
            },
        ];
        let svg = latency(&systems).expect("chart");
        let texts = texts(&svg);
        for expected in [
            "plexus",
            "raw-tcp",
            "p99.9",
            "one-way latency (µs, log scale)",
            "300 µs",
        ] {
            assert!(
                texts.iter().any(|t| t == expected),
                "no text {expected:?} in {texts:?}"
            );
        }
        // plexus's line has four points, raw-tcp's three (no max); each has a legend too.
        assert_eq!(lines(&svg, "#1F77B4"), [4, 2]);
        assert_eq!(lines(&svg, "#FF7F0E"), [3, 2]);
    }
}
