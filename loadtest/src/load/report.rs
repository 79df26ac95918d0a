//! What a loadtest found: the figures of each run, the report (JSON), the summary for a person, and
//! the plot (SVG, drawn with plotters' SVG backend: no system font or image library).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::check::{LogCheck, Mismatches};
use super::desk::{Timed, WatchLog};
use super::{LoadConfig, LoadError, Mode, Tick};

/// Everything one run (one gateway, one simulated day) measured.
#[derive(Debug)]
pub struct Round {
    /// The gateway's Salesforce mode.
    pub mode: Mode,
    /// How long new calls arrived.
    pub window_secs: f64,
    /// How long the calls in progress took to finish afterwards.
    pub drain_secs: f64,
    /// Calls still going at the end of the drain limit, cleared by the loadtest.
    pub forced_clears: u64,
    /// Calls the PBX cleared (traffic's and desks', consultation calls included).
    pub calls_completed: u64,
    /// Events the simulator sent on the link.
    pub pbx_events: u64,
    /// Times the simulator cut the gateway's link for falling behind.
    pub link_cuts: u64,
    /// Resyncs the gateway made.
    pub resyncs: u64,
    /// Call-control requests the desks had answered, by gRPC method.
    pub requests: BTreeMap<&'static str, Vec<Timed>>,
    /// Requests refused and waits that ran out at the desks.
    pub desk_errors: u64,
    /// A few of them.
    pub desk_error_samples: Vec<String>,
    /// Calls the desks completed.
    pub desk_calls: u64,
    /// The empty gRPC baseline.
    pub empty_grpc: Vec<Timed>,
    /// The Events watcher's findings.
    pub watch: WatchLog,
    /// The gateway's own ring-to-pop histogram, median.
    pub gateway_pop_p50_ms: Option<f64>,
    /// The same, 99th percentile.
    pub gateway_pop_p99_ms: Option<f64>,
    /// Salesforce data requests the sandbox counted.
    pub sf_requests: u64,
    /// Of which searches.
    pub sf_searches: u64,
    /// Of which upserts.
    pub sf_upserts: u64,
    /// The call logs against the ledger.
    pub logs: LogCheck,
    /// The state check.
    pub mismatches: Mismatches,
    /// The gateway's peak resident memory.
    pub peak_rss_bytes: u64,
    /// Per-second counters.
    pub ticks: Vec<Tick>,
    /// The gateway's log.
    pub gateway_log: PathBuf,
}

/// The `p` quantile (0..1) of the latencies, by nearest rank; 0 when there are none.
pub fn quantile(timed: &[Timed], p: f64) -> f64 {
    let mut values: Vec<f64> = timed.iter().map(|timed| timed.ms).collect();
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

impl Round {
    /// Every call-control request answered, whatever its method.
    fn all_requests(&self) -> Vec<Timed> {
        self.requests.values().flatten().copied().collect()
    }
}

/// One gRPC method's latency at the desks, send to answer.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MethodLatency {
    /// Requests answered with success.
    pub requests: u64,
    /// Median (ms).
    pub p50_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// The slowest (ms).
    pub max_ms: f64,
}

fn by_method(requests: &BTreeMap<&'static str, Vec<Timed>>) -> BTreeMap<String, MethodLatency> {
    let latency = |timed: &Vec<Timed>| MethodLatency {
        requests: timed.len() as u64,
        p50_ms: quantile(timed, 0.5),
        p99_ms: quantile(timed, 0.99),
        max_ms: quantile(timed, 1.0),
    };
    requests.iter().map(|(method, timed)| ((*method).to_owned(), latency(timed))).collect()
}

fn per_call(requests: u64, calls: u64) -> f64 {
    if calls == 0 { 0.0 } else { requests as f64 / calls as f64 }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// One second of the run, for the plot and the JSON.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    /// Seconds since the run began.
    pub at: f64,
    /// PBX events per second in this second.
    pub pbx_events_per_sec: f64,
    /// Calls cleared per second in this second.
    pub calls_per_sec: f64,
    /// Call-control requests answered in this second.
    pub grpc_requests_per_sec: f64,
    /// Their 99th percentile (ms), 0 without any.
    pub grpc_p99_ms: f64,
    /// Ring-to-pop 99th percentile of the rings in this second (ms), 0 without any.
    pub screen_pop_p99_ms: f64,
    /// Salesforce requests so far per call cleared so far.
    pub sf_requests_per_call: f64,
}

fn series(round: &Round) -> Vec<Point> {
    let mut previous = Tick::default();
    let mut points = Vec::new();
    let requests = round.all_requests();
    for tick in &round.ticks {
        let span = (tick.at - previous.at).max(1e-3);
        let within = |timed: &&Timed| timed.at >= previous.at && timed.at < tick.at;
        let grpc: Vec<Timed> = requests.iter().filter(within).copied().collect();
        let pops: Vec<Timed> = round.watch.pops.iter().filter(within).copied().collect();
        points.push(Point {
            at: tick.at,
            pbx_events_per_sec: (tick.pbx_events - previous.pbx_events) as f64 / span,
            calls_per_sec: (tick.calls_finished - previous.calls_finished) as f64 / span,
            grpc_requests_per_sec: grpc.len() as f64 / span,
            grpc_p99_ms: quantile(&grpc, 0.99),
            screen_pop_p99_ms: quantile(&pops, 0.99),
            sf_requests_per_call: per_call(tick.sf_requests, tick.calls_finished),
        });
        previous = *tick;
    }
    points
}

/// The loadtest's report: what `--json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Agents the simulator played.
    pub agents: u32,
    /// New calls per second asked for.
    pub offered_calls_per_sec: f64,
    /// Seconds new calls arrived.
    pub duration_secs: f64,
    /// The seed of the day.
    pub seed: u64,
    /// Desktops driving calls over gRPC.
    pub desks: u32,
    /// Calls the PBX cleared in the main run (every call of the window, played to its end).
    pub calls_completed: u64,
    /// `calls_completed` over the seconds calls arrived: the call rate the run sustained.
    pub calls_per_sec: f64,
    /// PBX events the simulator sent to the gateway.
    pub pbx_events: u64,
    /// Over the arrival window and the drain.
    pub pbx_events_per_sec: f64,
    /// Call-control requests the desks had answered.
    pub grpc_requests: u64,
    /// Over the arrival window.
    pub grpc_requests_per_sec: f64,
    /// Refused requests and waits that ran out, at the desks.
    pub grpc_errors: u64,
    /// Call-control latency, send to answer, median (ms).
    pub grpc_p50_ms: f64,
    /// The same, 99th percentile.
    pub grpc_p99_ms: f64,
    /// The same per gRPC method (`MakeCall`, `Answer`, `Hold`, ...).
    pub grpc_methods: BTreeMap<String, MethodLatency>,
    /// Screen pops timed from a ring seen on the Events stream.
    pub screen_pops: u64,
    /// Ring (a line's call shown alerting) to the call's screen pop for that line, both seen by
    /// the loadtest's Events subscriber, median (ms).
    pub screen_pop_p50_ms: f64,
    /// The same, 99th percentile.
    pub screen_pop_p99_ms: f64,
    /// Screen pops with no ring seen before them (outbound calls, pops after a resubscribe).
    pub screen_pops_unmatched: u64,
    /// Screen pops that say Salesforce could not be asked.
    pub screen_pops_failed: u64,
    /// The gateway's own `switchboard_salesforce_screen_pop_seconds`, median (ms).
    pub gateway_screen_pop_p50_ms: Option<f64>,
    /// The same, 99th percentile (interpolated within its buckets).
    pub gateway_screen_pop_p99_ms: Option<f64>,
    /// Salesforce data requests (the sandbox's count; token requests are not counted).
    pub sf_requests: u64,
    /// Of which searches.
    pub sf_searches: u64,
    /// Of which Task upserts.
    pub sf_upserts: u64,
    /// Per call completed.
    pub sf_requests_per_call: f64,
    /// The same day against `salesforce.mode = naive`.
    pub naive_sf_requests: Option<u64>,
    /// Per call completed in the naive run.
    pub naive_sf_requests_per_call: Option<f64>,
    /// How many times fewer requests per call the budget mode spent.
    pub sf_requests_saving_factor: Option<f64>,
    /// Finished call legs in the simulator's ledger.
    pub logs_expected: u64,
    /// Distinct Tasks matching them.
    pub logs_delivered: u64,
    /// Legs with no Task.
    pub logs_lost: u64,
    /// Tasks written more than once, and Tasks matching no leg.
    pub logs_duplicated: u64,
    /// Lines and calls where the gateway differed from the simulator at the end.
    pub state_mismatches: u64,
    /// The gateway's peak resident memory (VmHWM).
    pub peak_rss_bytes: u64,
    /// Times the simulator cut the gateway's link for falling behind its events.
    pub link_cuts: u64,
    /// Resyncs the gateway made.
    pub resyncs: u64,
    /// Calls the loadtest had to clear when the drain limit ran out.
    pub forced_clears: u64,
    /// Seconds the calls in progress took to end after the arrivals stopped.
    pub drain_secs: f64,
    /// Decode of link frames plus one channel hop, same run (events/s).
    pub baseline_decode_hop_events_per_sec: f64,
    /// An empty gRPC call (health check), same run, median (ms).
    pub baseline_empty_grpc_p50_ms: f64,
    /// The same, 99th percentile.
    pub baseline_empty_grpc_p99_ms: f64,
    /// `pbx_events_per_sec` over the decode baseline.
    pub pbx_events_vs_baseline: f64,
    /// `grpc_p50_ms` over the empty call's.
    pub grpc_p50_vs_baseline: f64,
    /// `grpc_p99_ms` over the empty call's.
    pub grpc_p99_vs_baseline: f64,
    /// The naive run's checks (it is the same gateway, so they must pass too).
    pub naive_state_mismatches: Option<u64>,
    /// Legs with no Task in the naive run.
    pub naive_logs_lost: Option<u64>,
    /// Duplicated Tasks in the naive run.
    pub naive_logs_duplicated: Option<u64>,
    /// The checks that failed, in words; empty when all passed.
    pub failures: Vec<String>,
    /// Per second of the main run.
    pub series: Vec<Point>,
    /// Per second of the naive run.
    pub naive_series: Vec<Point>,
    /// Samples of what went wrong (desk errors, mismatches, logs), for a person.
    pub notes: Vec<String>,
}

fn failures_of(round: &Round, prefix: &str, failures: &mut Vec<String>, notes: &mut Vec<String>) {
    if round.mismatches.count > 0 {
        failures.push(format!("{prefix}{} lines or calls differ from the simulator's", round.mismatches.count));
    }
    if round.logs.lost() > 0 {
        failures.push(format!(
            "{prefix}{} of {} call logs never reached Salesforce",
            round.logs.lost(),
            round.logs.expected
        ));
    }
    if round.logs.duplicated > 0 {
        failures.push(format!("{prefix}{} call logs duplicated or unexpected", round.logs.duplicated));
    }
    let samples = round.mismatches.samples.iter().chain(&round.logs.samples).chain(&round.desk_error_samples);
    notes.extend(samples.map(|sample| format!("{prefix}{sample}")));
    if !failures.is_empty() {
        notes.push(format!("{prefix}gateway log: {}", round.gateway_log.display()));
    }
}

impl Report {
    /// Gathers the figures.
    pub fn new(config: &LoadConfig, decode_hop: f64, main: Round, naive: Option<Round>) -> Self {
        let mut failures = Vec::new();
        let mut notes = Vec::new();
        failures_of(&main, "", &mut failures, &mut notes);
        if let Some(naive) = &naive {
            failures_of(naive, "naive run: ", &mut failures, &mut notes);
        }
        let window = main.window_secs.max(1e-3);
        let requests = main.all_requests();
        let grpc_p50_ms = quantile(&requests, 0.5);
        let grpc_p99_ms = quantile(&requests, 0.99);
        let empty_p50 = quantile(&main.empty_grpc, 0.5);
        let empty_p99 = quantile(&main.empty_grpc, 0.99);
        let pbx_events_per_sec = main.pbx_events as f64 / (main.window_secs + main.drain_secs).max(1e-3);
        let sf_requests_per_call = per_call(main.sf_requests, main.calls_completed);
        let naive_per_call = naive.as_ref().map(|naive| per_call(naive.sf_requests, naive.calls_completed));
        Self {
            agents: config.agents,
            offered_calls_per_sec: config.calls_per_sec,
            duration_secs: config.duration.as_secs_f64(),
            seed: config.seed,
            desks: config.desks,
            calls_completed: main.calls_completed,
            calls_per_sec: main.calls_completed as f64 / window,
            pbx_events: main.pbx_events,
            pbx_events_per_sec,
            grpc_requests: requests.len() as u64,
            grpc_requests_per_sec: requests.len() as f64 / window,
            grpc_errors: main.desk_errors,
            grpc_p50_ms,
            grpc_p99_ms,
            grpc_methods: by_method(&main.requests),
            screen_pops: main.watch.pops.len() as u64,
            screen_pop_p50_ms: quantile(&main.watch.pops, 0.5),
            screen_pop_p99_ms: quantile(&main.watch.pops, 0.99),
            screen_pops_unmatched: main.watch.pops_unmatched,
            screen_pops_failed: main.watch.pops_failed,
            gateway_screen_pop_p50_ms: main.gateway_pop_p50_ms,
            gateway_screen_pop_p99_ms: main.gateway_pop_p99_ms,
            sf_requests: main.sf_requests,
            sf_searches: main.sf_searches,
            sf_upserts: main.sf_upserts,
            sf_requests_per_call,
            naive_sf_requests: naive.as_ref().map(|naive| naive.sf_requests),
            naive_sf_requests_per_call: naive_per_call,
            sf_requests_saving_factor: naive_per_call.map(|naive| ratio(naive, sf_requests_per_call)),
            logs_expected: main.logs.expected,
            logs_delivered: main.logs.delivered,
            logs_lost: main.logs.lost(),
            logs_duplicated: main.logs.duplicated,
            state_mismatches: main.mismatches.count,
            peak_rss_bytes: main.peak_rss_bytes,
            link_cuts: main.link_cuts,
            resyncs: main.resyncs,
            forced_clears: main.forced_clears,
            drain_secs: main.drain_secs,
            baseline_decode_hop_events_per_sec: decode_hop,
            baseline_empty_grpc_p50_ms: empty_p50,
            baseline_empty_grpc_p99_ms: empty_p99,
            pbx_events_vs_baseline: ratio(pbx_events_per_sec, decode_hop),
            grpc_p50_vs_baseline: ratio(grpc_p50_ms, empty_p50),
            grpc_p99_vs_baseline: ratio(grpc_p99_ms, empty_p99),
            naive_state_mismatches: naive.as_ref().map(|naive| naive.mismatches.count),
            naive_logs_lost: naive.as_ref().map(|naive| naive.logs.lost()),
            naive_logs_duplicated: naive.as_ref().map(|naive| naive.logs.duplicated),
            failures,
            series: series(&main),
            naive_series: naive.as_ref().map(series).unwrap_or_default(),
            notes,
        }
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Result<String, LoadError> {
        serde_json::to_string_pretty(self).map_err(|error| LoadError::Report(error.to_string()))
    }

    /// The summary a person reads at the end of a run.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        let optional = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |value| format!("{value:.3}"));
        let _ = writeln!(
            text,
            "switchboard loadtest: {} agents, {} calls/s offered for {:.0} s, seed {}, {} desks",
            self.agents, self.offered_calls_per_sec, self.duration_secs, self.seed, self.desks
        );
        let _ = writeln!(
            text,
            "  calls      {} completed, {:.1} calls/s sustained; drain {:.1} s; {} cleared by force",
            self.calls_completed, self.calls_per_sec, self.drain_secs, self.forced_clears
        );
        let _ = writeln!(
            text,
            "  pbx link   {:.0} events/s ({:.4} of the decode+hop baseline's {:.0}); {} link cuts, {} resyncs",
            self.pbx_events_per_sec,
            self.pbx_events_vs_baseline,
            self.baseline_decode_hop_events_per_sec,
            self.link_cuts,
            self.resyncs
        );
        let _ = writeln!(
            text,
            "  grpc       {} call-control requests ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms ({:.1}x / {:.1}x the empty call's {:.2} / {:.2} ms); {} errors",
            self.grpc_requests,
            self.grpc_requests_per_sec,
            self.grpc_p50_ms,
            self.grpc_p99_ms,
            self.grpc_p50_vs_baseline,
            self.grpc_p99_vs_baseline,
            self.baseline_empty_grpc_p50_ms,
            self.baseline_empty_grpc_p99_ms,
            self.grpc_errors
        );
        for (method, latency) in &self.grpc_methods {
            let _ = writeln!(
                text,
                "             {method}: {} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                latency.requests, latency.p50_ms, latency.p99_ms, latency.max_ms
            );
        }
        let _ = writeln!(
            text,
            "  screen pop {} timed, ring to pop p50 {:.1} ms, p99 {:.1} ms (gateway histogram: p50 {} ms, p99 {} ms); {} unmatched, {} failed",
            self.screen_pops,
            self.screen_pop_p50_ms,
            self.screen_pop_p99_ms,
            optional(self.gateway_screen_pop_p50_ms),
            optional(self.gateway_screen_pop_p99_ms),
            self.screen_pops_unmatched,
            self.screen_pops_failed
        );
        let _ = writeln!(
            text,
            "  salesforce {} requests ({} searches, {} upserts), {:.4} per call; naive mode {} per call ({}x)",
            self.sf_requests,
            self.sf_searches,
            self.sf_upserts,
            self.sf_requests_per_call,
            optional(self.naive_sf_requests_per_call),
            optional(self.sf_requests_saving_factor)
        );
        let _ = writeln!(
            text,
            "  checks     state mismatches {}, call logs {}/{} delivered, {} lost, {} duplicated",
            self.state_mismatches, self.logs_delivered, self.logs_expected, self.logs_lost, self.logs_duplicated
        );
        let _ = writeln!(text, "  memory     gateway peak RSS {:.1} MiB", self.peak_rss_bytes as f64 / 1_048_576.0);
        for note in &self.notes {
            let _ = writeln!(text, "  note: {note}");
        }
        if self.passed() {
            let _ = writeln!(text, "PASSED: every check held");
        } else {
            for failure in &self.failures {
                let _ = writeln!(text, "FAILED: {failure}");
            }
        }
        text
    }

    /// Draws the plot: latency over time, throughput, and Salesforce requests per call against the
    /// naive mode. SVG only (the PNG backend would need image and font libraries).
    pub fn plot(&self, path: &Path) -> Result<(), LoadError> {
        if path.extension().and_then(|extension| extension.to_str()) != Some("svg") {
            return Err(LoadError::Report(format!("{}: the report is drawn as SVG; name it .svg", path.display())));
        }
        draw(self, path).map_err(|error| LoadError::Report(format!("drawing {}: {error}", path.display())))
    }
}

type Drawn = Result<(), Box<dyn std::error::Error>>;

/// One line of a panel: its legend, colour and points.
type Line = (String, plotters::style::RGBColor, Vec<(f64, f64)>);

/// Where Debian and others keep a sans-serif TTF (`fonts-dejavu-core`, `fonts-liberation`).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a font for the plot's text, once. plotters measures text with a font it is given
/// (pure Rust, no fontconfig), so one must be on disk.
fn register_font() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let font = FONTS.iter().find_map(|path| std::fs::read(path).ok()).ok_or_else(|| {
                format!("no font for the plot's text (Debian: apt-get install fonts-dejavu-core); looked in {FONTS:?}")
            })?;
            plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                Box::leak(font.into_boxed_slice()),
            )
            .map_err(|_| "the font found is not one plotters can read".to_owned())
        })
        .clone()
}

fn draw(report: &Report, path: &Path) -> Drawn {
    use plotters::prelude::*;
    register_font()?;
    let root = SVGBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "switchboard loadtest: {} agents, {} calls/s offered, seed {}",
        report.agents, report.offered_calls_per_sec, report.seed
    );
    let root = root.titled(&title, ("sans-serif", 22))?;
    let panels = root.split_evenly((2, 2));
    let end = report.series.iter().chain(&report.naive_series).map(|point| point.at).fold(1.0, f64::max);
    let panel = |area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
                 caption: &str,
                 unit: &str,
                 lines: Vec<Line>|
     -> Drawn {
        let top = lines.iter().flat_map(|(_, _, points)| points.iter().map(|point| point.1)).fold(0.0, f64::max);
        let top = if top > 0.0 { top * 1.15 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..end, 0.0..top)?;
        chart.configure_mesh().x_desc("seconds since start").y_desc(unit).draw()?;
        for (name, color, points) in lines {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
        Ok(())
    };
    let line = |points: &[Point], value: fn(&Point) -> f64| -> Vec<(f64, f64)> {
        points.iter().map(|point| (point.at, value(point))).collect()
    };
    let main = &report.series;
    let naive = &report.naive_series;
    panel(
        &panels[0],
        "latency over time (99th percentile per second)",
        "ms",
        vec![
            ("gRPC call control p99".to_owned(), BLUE, line(main, |point| point.grpc_p99_ms)),
            ("ring to screen pop p99".to_owned(), RED, line(main, |point| point.screen_pop_p99_ms)),
        ],
    )?;
    panel(
        &panels[1],
        "PBX events through the gateway",
        "events/s",
        vec![("PBX events/s".to_owned(), BLUE, line(main, |point| point.pbx_events_per_sec))],
    )?;
    panel(
        &panels[2],
        "throughput",
        "per second",
        vec![
            ("calls cleared/s".to_owned(), GREEN, line(main, |point| point.calls_per_sec)),
            ("gRPC requests/s".to_owned(), MAGENTA, line(main, |point| point.grpc_requests_per_sec)),
        ],
    )?;
    let mut requests = vec![("budget mode".to_owned(), BLUE, line(main, |point| point.sf_requests_per_call))];
    if !naive.is_empty() {
        requests.push((
            "naive mode (one request per operation)".to_owned(),
            RED,
            line(naive, |point| point.sf_requests_per_call),
        ));
    }
    panel(&panels[3], "Salesforce requests per call so far", "requests per call", requests)?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let timed: Vec<Timed> = (1..=100).map(|ms| Timed { at: 0.0, ms: f64::from(ms) }).collect();
        assert_eq!(quantile(&timed, 0.5), 50.0);
        assert_eq!(quantile(&timed, 0.99), 99.0);
        assert_eq!(quantile(&[], 0.99), 0.0);
    }

    #[test]
    fn latency_is_kept_per_method() {
        let timed = |values: &[f64]| values.iter().map(|&ms| Timed { at: 0.0, ms }).collect::<Vec<_>>();
        let requests = BTreeMap::from([("Hold", timed(&[1.0, 3.0, 2.0])), ("LogIn", timed(&[9.0]))]);
        let methods = by_method(&requests);
        assert_eq!(methods.keys().collect::<Vec<_>>(), ["Hold", "LogIn"]);
        let hold = methods["Hold"];
        assert_eq!((hold.requests, hold.p50_ms, hold.p99_ms, hold.max_ms), (3, 2.0, 3.0, 3.0));
        assert_eq!(methods["LogIn"].requests, 1);
    }
}
