//! `dashboard-render`: draws a Grafana dashboard from `dashboards/` as a PNG, laid out on its own
//! grid, with every panel's queries run over a time range against a live Prometheus. Grafana is not
//! packaged for Debian; this shows what the dashboard shows, for the README, from a real run.
//!
//! ```text
//! dashboard-render --prometheus 127.0.0.1:9090 --dashboard dashboards/switchboard.json \
//!     --out docs/dashboard.png --minutes 10 --cluster demo --instance gw-1
//! ```

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor;
use serde_json::Value;

/// Grafana's grid: 24 columns; a height unit is 30 pixels.
const WIDTH: u32 = 1920;
const UNIT: u32 = 30;
const BACKGROUND: RGBColor = RGBColor(17, 18, 23);
const PANEL: RGBColor = RGBColor(24, 27, 31);
const BORDER: RGBColor = RGBColor(44, 50, 53);
const TEXT: RGBColor = RGBColor(204, 204, 220);
const MUTED: RGBColor = RGBColor(140, 140, 155);
const PALETTE: [RGBColor; 8] = [
    RGBColor(115, 191, 105),
    RGBColor(242, 204, 12),
    RGBColor(87, 148, 242),
    RGBColor(255, 120, 10),
    RGBColor(242, 73, 92),
    RGBColor(184, 119, 217),
    RGBColor(112, 219, 237),
    RGBColor(250, 222, 42),
];

struct Options {
    prometheus: String,
    dashboard: String,
    out: String,
    minutes: u64,
    cluster: String,
    instance: String,
    font: String,
}

fn options() -> Result<Options> {
    let mut options = Options {
        prometheus: "127.0.0.1:9090".into(),
        dashboard: "dashboards/switchboard.json".into(),
        out: "docs/dashboard.png".into(),
        minutes: 10,
        cluster: ".*".into(),
        instance: ".*".into(),
        font: "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--prometheus" => options.prometheus = value,
            "--dashboard" => options.dashboard = value,
            "--out" => options.out = value,
            "--minutes" => options.minutes = value.parse().context("--minutes")?,
            "--cluster" => options.cluster = value,
            "--instance" => options.instance = value,
            "--font" => options.font = value,
            other => bail!("unknown flag {other}; see the top of tools/src/bin/dashboard_render.rs"),
        }
    }
    Ok(options)
}

/// GET over plain HTTP/1.1 (Prometheus on loopback), returning the body.
fn http_get(address: &str, path: &str) -> Result<String> {
    let mut stream = std::net::TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP response from {address}"))?;
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(body.to_owned());
    }
    let (mut rest, mut out) = (body, String::new());
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    Ok(out)
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// One series of a query over the range: its legend and its points (unix seconds, value).
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

fn legend(format: &str, metric: &Value) -> String {
    if format.is_empty() || format == "__auto" {
        let labels: Vec<String> = metric
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, _)| !matches!(key.as_str(), "__name__" | "job" | "cluster" | "instance"))
            .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or("")))
            .collect();
        return if labels.is_empty() { "value".into() } else { labels.join(", ") };
    }
    let mut out = format.to_owned();
    if let Some(labels) = metric.as_object() {
        for (key, value) in labels {
            out = out.replace(&format!("{{{{{key}}}}}"), value.as_str().unwrap_or(""));
        }
    }
    out
}

fn query_range(options: &Options, expr: &str, format: &str, start: f64, end: f64) -> Result<Vec<Series>> {
    let window = format!("{}m", options.minutes);
    let expr = expr
        .replace("$__rate_interval", "30s")
        .replace("$__range", &window)
        .replace("$cluster", &options.cluster)
        .replace("$instance", &options.instance);
    let step = ((end - start) / 240.0).max(1.0);
    let path = format!("/api/v1/query_range?query={}&start={start}&end={end}&step={step}", encode(&expr));
    let body = http_get(&options.prometheus, &path)?;
    let answer: Value = serde_json::from_str(&body).with_context(|| format!("prometheus answered {body}"))?;
    if answer["status"] != "success" {
        bail!("prometheus refused {expr}: {body}");
    }
    let results = answer["data"]["result"].as_array().cloned().unwrap_or_default();
    Ok(results
        .iter()
        .map(|result| Series {
            name: legend(format, &result["metric"]),
            points: result["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|pair| Some((pair[0].as_f64()?, pair[1].as_str()?.parse::<f64>().ok()?)))
                .filter(|(_, value)| value.is_finite())
                .collect(),
        })
        .collect())
}

/// A value in the panel's unit, as Grafana would write it (near enough).
fn format_value(unit: &str, value: f64) -> String {
    let short = |value: f64| {
        let magnitude = value.abs();
        if magnitude >= 1e6 {
            format!("{:.1}M", value / 1e6)
        } else if magnitude >= 1e3 {
            format!("{:.1}K", value / 1e3)
        } else if magnitude >= 10.0 || value == value.trunc() {
            format!("{value:.0}")
        } else {
            format!("{value:.2}")
        }
    };
    match unit {
        "percentunit" => format!("{:.1}%", value * 100.0),
        "s" if value.abs() < 1.0 && value != 0.0 => format!("{:.0} ms", value * 1000.0),
        "s" => format!("{} s", short(value)),
        "bytes" => format!("{:.0} MiB", value / 1_048_576.0),
        "ops" | "reqps" | "cps" => format!("{}/s", short(value)),
        _ => short(value),
    }
}

fn clock(unix: f64) -> String {
    let seconds = unix as u64 % 86_400;
    format!("{:02}:{:02}", seconds / 3600, seconds / 60 % 60)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn draw_panel(area: &Area<'_>, panel: &Value, series: &[Series], start: f64, end: f64) -> Result<()> {
    area.fill(&PANEL).map_err(|error| anyhow!("{error}"))?;
    let (width, height) = area.dim_in_pixel();
    let border = Rectangle::new([(0, 0), (width as i32 - 1, height as i32 - 1)], BORDER.stroke_width(1));
    area.draw(&border).map_err(|error| anyhow!("{error}"))?;
    let title = panel["title"].as_str().unwrap_or("");
    area.draw(&Text::new(title.to_owned(), (8, 6), ("sans-serif", 15).into_font().color(&TEXT)))
        .map_err(|error| anyhow!("{error}"))?;
    let unit = panel["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("none");
    let body = area.margin(28, 6, 6, 8);
    let last = |series: &Series| series.points.last().map(|(_, value)| *value);
    match panel["type"].as_str().unwrap_or("") {
        "stat" => {
            let value = series.iter().filter_map(last).next();
            let text = value.map_or("No data".to_owned(), |value| format_value(unit, value));
            let (body_width, body_height) = body.dim_in_pixel();
            let size = (body_height as f64 * 0.6).min(48.0);
            let style = ("sans-serif", size)
                .into_font()
                .color(&PALETTE[0])
                .pos(text_anchor::Pos::new(text_anchor::HPos::Center, text_anchor::VPos::Center));
            body.draw(&Text::new(text, (body_width as i32 / 2, body_height as i32 / 2), style))
                .map_err(|error| anyhow!("{error}"))?;
        }
        "bargauge" | "table" => {
            let rows: Vec<(String, f64)> =
                series.iter().filter_map(|series| Some((series.name.clone(), last(series)?))).collect();
            let max = rows.iter().map(|(_, value)| *value).fold(0.0_f64, f64::max).max(1e-9);
            let (body_width, _) = body.dim_in_pixel();
            for (index, (name, value)) in rows.iter().enumerate().take(8) {
                let y = index as i32 * 22;
                let label = format!("{name}: {}", format_value(unit, *value));
                if panel["type"] == "bargauge" {
                    let bar = (f64::from(body_width) * 0.55 * value / max) as i32;
                    let color = PALETTE[index % PALETTE.len()];
                    body.draw(&Rectangle::new([(180, y + 2), (180 + bar.max(2), y + 16)], color.filled()))
                        .map_err(|error| anyhow!("{error}"))?;
                    body.draw(&Text::new(name.clone(), (0, y + 2), ("sans-serif", 13).into_font().color(&TEXT)))
                        .map_err(|error| anyhow!("{error}"))?;
                    let value = format_value(unit, *value);
                    body.draw(&Text::new(
                        value,
                        (186 + bar.max(2), y + 2),
                        ("sans-serif", 13).into_font().color(&MUTED),
                    ))
                    .map_err(|error| anyhow!("{error}"))?;
                } else {
                    body.draw(&Text::new(label, (0, y + 2), ("sans-serif", 13).into_font().color(&TEXT)))
                        .map_err(|error| anyhow!("{error}"))?;
                }
            }
        }
        _ => draw_timeseries(&body, unit, series, start, end)?,
    }
    Ok(())
}

fn draw_timeseries(body: &Area<'_>, unit: &str, series: &[Series], start: f64, end: f64) -> Result<()> {
    let values = series.iter().flat_map(|series| series.points.iter().map(|(_, value)| *value));
    let (low, high) = values.fold((0.0_f64, 0.0_f64), |(low, high), value| (low.min(value), high.max(value)));
    let high = if high - low < 1e-9 { low + 1.0 } else { high + (high - low) * 0.1 };
    let mut chart = ChartBuilder::on(body)
        .x_label_area_size(18)
        .y_label_area_size(62)
        .build_cartesian_2d(start..end, low..high)
        .map_err(|error| anyhow!("{error}"))?;
    chart
        .configure_mesh()
        .bold_line_style(BORDER)
        .light_line_style(PANEL)
        .axis_style(BORDER)
        .label_style(("sans-serif", 11).into_font().color(&MUTED))
        .x_labels(6)
        .y_labels(5)
        .x_label_formatter(&|time| clock(*time))
        .y_label_formatter(&|value| format_value(unit, *value))
        .draw()
        .map_err(|error| anyhow!("{error}"))?;
    for (index, series) in series.iter().enumerate().take(12) {
        let color = PALETTE[index % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(series.points.iter().copied(), color.stroke_width(2)))
            .map_err(|error| anyhow!("{error}"))?
            .label(series.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], color.stroke_width(2)));
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(PANEL.mix(0.8))
            .border_style(BORDER)
            .label_font(("sans-serif", 11).into_font().color(&TEXT))
            .draw()
            .map_err(|error| anyhow!("{error}"))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let options = options()?;
    let font = std::fs::read(&options.font)
        .with_context(|| format!("reading the font {} (Debian: fonts-dejavu-core; or --font)", options.font))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| anyhow!("{} is not a font plotters can read", options.font))?;
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(&options.dashboard).with_context(|| format!("reading {}", options.dashboard))?,
    )?;
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    let grid = |panel: &Value, key: &str| panel["gridPos"][key].as_u64().unwrap_or(0) as u32;
    let bottom = panels.iter().map(|panel| grid(panel, "y") + grid(panel, "h")).max().unwrap_or(1);
    let end = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let start = end - options.minutes as f64 * 60.0;
    let title_height = 40;
    let height = title_height + bottom * UNIT;
    let root = BitMapBackend::new(&options.out, (WIDTH, height)).into_drawing_area();
    root.fill(&BACKGROUND).map_err(|error| anyhow!("{error}"))?;
    let heading = format!(
        "{}   cluster={} instance={}   last {} minutes",
        dashboard["title"].as_str().unwrap_or("dashboard"),
        options.cluster,
        options.instance,
        options.minutes
    );
    root.draw(&Text::new(heading, (12, 10), ("sans-serif", 20).into_font().color(&TEXT)))
        .map_err(|error| anyhow!("{error}"))?;
    let column = WIDTH / 24;
    for panel in &panels {
        let (x, y) = (grid(panel, "x") * column, title_height + grid(panel, "y") * UNIT);
        let (w, h) = (grid(panel, "w") * column, grid(panel, "h") * UNIT);
        let area = root.clone().shrink((x + 3, y + 3), (w.saturating_sub(6), h.saturating_sub(6)));
        if panel["type"] == "row" {
            let title = panel["title"].as_str().unwrap_or("").to_owned();
            area.draw(&Text::new(title, (4, 4), ("sans-serif", 17).into_font().color(&TEXT)))
                .map_err(|error| anyhow!("{error}"))?;
            continue;
        }
        let mut series = Vec::new();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or("");
            let format = target["legendFormat"].as_str().unwrap_or("");
            series.extend(query_range(&options, expr, format, start, end)?);
        }
        draw_panel(&area, panel, &series, start, end)?;
    }
    root.present().map_err(|error| anyhow!("{error}"))?;
    writeln!(std::io::stdout().lock(), "wrote {}", options.out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_in_their_panels_unit() {
        assert_eq!(format_value("percentunit", 0.9995), "100.0%");
        assert_eq!(format_value("s", 0.25), "250 ms");
        assert_eq!(format_value("s", 12.0), "12 s");
        assert_eq!(format_value("bytes", 28.0 * 1_048_576.0), "28 MiB");
        assert_eq!(format_value("ops", 1500.0), "1.5K/s");
        assert_eq!(format_value("none", 3.0), "3");
    }

    #[test]
    fn legends_fill_in_labels_like_grafana() {
        let metric = serde_json::json!({"__name__": "x", "instance": "gw-1", "reason": "decode_error"});
        assert_eq!(legend("{{reason}} on {{instance}}", &metric), "decode_error on gw-1");
        assert_eq!(legend("__auto", &metric), "reason=decode_error");
        assert_eq!(legend("", &serde_json::json!({})), "value");
    }
}
