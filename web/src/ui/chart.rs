//! The overview's chart of the last hour: the project's memory and CPU as two SVG
//! polylines, drawn on the server (no script, nothing inline but the SVG itself).

use paastech_core::Timestamp;
use paastech_core::stats::{HISTORY, StatsPoint};

/// The SVG's drawing box: 0..WIDTH from an hour ago to now, 0..HEIGHT from the top.
pub const WIDTH: f64 = 300.0;
pub const HEIGHT: f64 = 80.0;

/// What the template draws.
pub struct UsageChart {
    /// `points` of the memory line, each `x,y`.
    pub memory: String,
    /// The same for the CPU line.
    pub cpu: String,
    /// The top of each scale, as shown next to the chart.
    pub memory_top: String,
    pub cpu_top: String,
}

impl UsageChart {
    /// The chart of `points` (oldest first) ending at `now`; `None` until there are two
    /// points with a figure, which is all a line needs.
    pub fn of(points: &[StatsPoint], now: Timestamp) -> Option<UsageChart> {
        let memory: Vec<(Timestamp, f64)> =
            points.iter().filter_map(|p| Some((p.at, p.memory_bytes? as f64))).collect();
        let cpu: Vec<(Timestamp, f64)> = points.iter().filter_map(|p| Some((p.at, p.cpu_percent?))).collect();
        if memory.len() < 2 && cpu.len() < 2 {
            return None;
        }
        let memory_top = nice_top(memory.iter().map(|(_, m)| *m).fold(0.0, f64::max), 1024.0 * 1024.0);
        // At least 10 %: an idle app's line stays at the bottom, not drawn full height.
        let cpu_top = nice_top(cpu.iter().map(|(_, c)| *c).fold(10.0, f64::max), 1.0);
        Some(UsageChart {
            memory: line(&memory, memory_top, now),
            cpu: line(&cpu, cpu_top, now),
            memory_top: format!("{:.0} MiB", memory_top / (1024.0 * 1024.0)),
            cpu_top: format!("{cpu_top:.0} % CPU"),
        })
    }
}

/// The polyline's points, `x,y` separated by spaces.
fn line(values: &[(Timestamp, f64)], top: f64, now: Timestamp) -> String {
    let span = HISTORY.as_millis() as f64;
    values
        .iter()
        .map(|(at, value)| {
            let x = (WIDTH - (now.0 - at.0) as f64 / span * WIDTH).clamp(0.0, WIDTH);
            let y = HEIGHT - (value / top).clamp(0.0, 1.0) * (HEIGHT - 2.0) - 1.0;
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A round top for a scale whose largest value is `max` (in `unit`s): 1, 2 or 5 times a
/// power of ten units, at least one unit.
fn nice_top(max: f64, unit: f64) -> f64 {
    let units = (max / unit).max(1.0);
    let magnitude = 10f64.powf(units.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|top| *top >= units).unwrap_or(units);
    step * unit
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn point(at_s: i64, cpu: Option<f64>, memory_mib: Option<u64>) -> StatsPoint {
        StatsPoint { at: Timestamp(at_s * 1000), cpu_percent: cpu, memory_bytes: memory_mib.map(|m| m * MIB) }
    }

    #[test]
    fn scales_are_round_and_lines_span_the_hour() {
        let now = Timestamp(3600 * 1000);
        let chart = UsageChart::of(
            &[point(0, None, Some(60)), point(1800, Some(5.0), Some(120)), point(3600, Some(30.0), Some(30))],
            now,
        )
        .expect("a chart");
        assert_eq!(chart.memory_top, "200 MiB");
        assert_eq!(chart.cpu_top, "50 % CPU");
        assert_eq!(chart.memory, "0.0,55.6 150.0,32.2 300.0,67.3");
        assert_eq!(chart.cpu, "150.0,71.2 300.0,32.2");
    }

    #[test]
    fn one_point_makes_no_chart() {
        assert!(UsageChart::of(&[point(0, Some(1.0), Some(1))], Timestamp(0)).is_none());
        assert!(UsageChart::of(&[point(0, None, None), point(30, None, None)], Timestamp(30_000)).is_none());
    }

    #[test]
    fn nice_tops() {
        assert_eq!(nice_top(0.0, 1.0), 1.0);
        assert_eq!(nice_top(3.0, 1.0), 5.0);
        assert_eq!(nice_top(10.0, 1.0), 10.0);
        assert_eq!(nice_top(101.0, 1.0), 200.0);
        assert_eq!(nice_top(550.0, 1.0), 1000.0);
    }
}
