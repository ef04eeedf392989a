//! `--plot FILE.svg`: latency over time (mean and maximum per 100 ms slot, log scale), drawn
//! with plotters' SVG backend only.

use std::path::Path;

use plotters::prelude::*;

use super::subscriber::{SLOT_NS, Slot};

/// Draws the timeline (slots of [`SLOT_NS`] since the go signal) into an SVG file.
pub fn write_svg(path: &Path, timeline: &[Slot], title: &str) -> Result<(), String> {
    let slot_seconds = SLOT_NS as f64 / 1e9;
    let to_ms = |ns: f64| ns / 1e6;
    let points: Vec<(f64, f64, f64)> = timeline
        .iter()
        .enumerate()
        .filter(|(_, slot)| slot.count > 0)
        .map(|(i, slot)| {
            let t = (i as f64 + 0.5) * slot_seconds;
            let mean = to_ms(slot.sum_ns as f64 / slot.count as f64);
            (t, mean, to_ms(slot.max_ns as f64))
        })
        .collect();
    if points.is_empty() {
        return Err("no message was delivered: nothing to plot".into());
    }
    let x_max = timeline.len() as f64 * slot_seconds;
    let y_min = points
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .max(1e-4)
        / 2.0;
    let y_max = points
        .iter()
        .map(|p| p.2)
        .fold(0.0, f64::max)
        .max(y_min * 4.0)
        * 1.5;
    let error = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());

    let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first publish")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| error(&e))?;
    chart
        .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.2)), &RED))
        .map_err(|e| error(&e))?
        .label("max per 100 ms")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), &BLUE))
        .map_err(|e| error(&e))?
        .label("mean per 100 ms")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))
}
