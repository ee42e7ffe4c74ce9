//! Bar and line charts drawn with vector lines and rectangles.

use crate::layout::{Canvas, LINE_SPACING};
use crate::metrics::{Font, text_width, truncate_to_width};
use crate::{BODY_SIZE, MARGIN, Series, TEXT_WIDTH};

const TITLE_SIZE: f32 = 11.0;
const LABEL_SIZE: f32 = 8.0;
const BAR_HEIGHT: f32 = 12.0;
const BAR_GAP: f32 = 5.0;
const PLOT_HEIGHT: f32 = 170.0;
/// Values are clamped to this magnitude, so that the axis arithmetic stays finite.
const MAX_VALUE: f64 = 1e12;
/// The dash patterns of line series, in order: solid, dashed, dotted.
const DASHES: [&[f32]; 3] = [&[], &[4.0, 2.0], &[1.0, 2.0]];

/// Ticks of a value axis: evenly spaced round numbers covering a range.
#[derive(Debug, PartialEq)]
struct Axis {
    low: f64,
    high: f64,
    step: f64,
}

impl Axis {
    /// Chooses about five ticks, 1, 2 or 5 times a power of ten apart, covering `low..=high`.
    fn covering(low: f64, high: f64) -> Self {
        let (low, high) = if high - low < 1e-9 {
            (low - 1.0, high + 1.0)
        } else {
            (low, high)
        };
        let rough = (high - low) / 5.0;
        let magnitude = 10f64.powf(rough.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|factor| factor * magnitude)
            .find(|step| *step >= rough)
            .unwrap_or(10.0 * magnitude);
        Self {
            low: (low / step).floor() * step,
            high: (high / step).ceil() * step,
            step,
        }
    }

    fn ticks(&self) -> Vec<f64> {
        // Bounded, because with extreme ranges adding the step may not change a float.
        (0..=12)
            .map(|index| self.low + f64::from(index) * self.step)
            .take_while(|tick| *tick <= self.high + self.step * 1e-6)
            .collect()
    }

    /// Returns where `value` falls along an axis `length` points long.
    fn position(&self, value: f64, length: f32) -> f32 {
        let span = self.high - self.low;
        if span <= 0.0 {
            return 0.0;
        }
        (((value - self.low) / span).clamp(0.0, 1.0) as f32) * length
    }

    fn label(&self, value: f64) -> String {
        let decimals = if self.step >= 1.0 {
            0
        } else {
            (-self.step.log10()).ceil().clamp(0.0, 6.0) as usize
        };
        format!("{value:.decimals$}")
    }
}

fn finite(value: f64) -> Option<f64> {
    value
        .is_finite()
        .then(|| value.clamp(-MAX_VALUE, MAX_VALUE))
}

/// Formats a value for printing beside a bar: up to one decimal place, then the unit.
fn value_label(value: f64, unit: &str) -> String {
    let number = if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    };
    match unit.chars().next() {
        None => number,
        Some(first) if first.is_alphanumeric() => format!("{number} {unit}"),
        Some(_) => format!("{number}{unit}"),
    }
}

fn title(canvas: &mut Canvas, text: &str) {
    let line = truncate_to_width(text, Font::Bold, TITLE_SIZE, TEXT_WIDTH);
    let baseline = canvas.y - TITLE_SIZE;
    canvas.text(Font::Bold, TITLE_SIZE, MARGIN, baseline, &line);
    canvas.y -= TITLE_SIZE * LINE_SPACING + 4.0;
}

/// Draws a horizontal bar chart, continuing on the next page with the same scale when the bars
/// do not all fit.
pub(crate) fn bar_chart(
    canvas: &mut Canvas,
    chart_title: &str,
    bars: &[(String, f64)],
    unit: &str,
) {
    let values: Vec<Option<f64>> = bars.iter().map(|(_, value)| finite(*value)).collect();
    let low = values.iter().flatten().fold(0.0, |low: f64, v| low.min(*v));
    let high = values
        .iter()
        .flatten()
        .fold(0.0, |high: f64, v| high.max(*v));
    let axis = Axis::covering(low, high);

    let widest_label = bars
        .iter()
        .map(|(label, _)| text_width(label, Font::Regular, LABEL_SIZE))
        .fold(0.0, f32::max);
    let label_space = widest_label.min(TEXT_WIDTH * 0.35);
    let label_width = label_space + 6.0;
    let widest_value = values
        .iter()
        .map(|value| match value {
            Some(value) => text_width(&value_label(*value, unit), Font::Regular, LABEL_SIZE),
            None => text_width("n/a", Font::Regular, LABEL_SIZE),
        })
        .fold(0.0, f32::max);
    let value_width = widest_value.min(TEXT_WIDTH * 0.2) + 6.0;
    let plot_left = MARGIN + label_width;
    let plot_width = (TEXT_WIDTH - label_width - value_width).max(20.0);
    let zero = plot_left + axis.position(0.0, plot_width);

    let title_height = TITLE_SIZE * LINE_SPACING + 4.0;
    let axis_height = LABEL_SIZE * 2.5;
    let row_height = BAR_HEIGHT + BAR_GAP;
    let mut next = 0;
    loop {
        let needed = title_height + (bars.len() - next).max(1) as f32 * row_height + axis_height;
        canvas.ensure(needed.min(Canvas::page_height()));
        let room = canvas.y - crate::layout::BOTTOM - title_height - axis_height;
        let fitting = ((room / row_height).floor().max(1.0) as usize).min(bars.len() - next);
        title(canvas, chart_title);
        let top = canvas.y;
        for (offset, (label, _)) in bars[next..next + fitting].iter().enumerate() {
            let bar_top = top - offset as f32 * row_height - BAR_GAP / 2.0;
            let baseline = bar_top - BAR_HEIGHT / 2.0 - LABEL_SIZE * 0.35;
            let label = truncate_to_width(label, Font::Regular, LABEL_SIZE, label_space);
            canvas.text(Font::Regular, LABEL_SIZE, MARGIN, baseline, &label);
            match values[next + offset] {
                Some(value) => {
                    let end = plot_left + axis.position(value, plot_width);
                    let content = canvas.content();
                    content.set_fill_gray(0.45);
                    content.rect(
                        zero.min(end),
                        bar_top - BAR_HEIGHT,
                        (end - zero).abs(),
                        BAR_HEIGHT,
                    );
                    content.fill_nonzero();
                    content.set_fill_gray(0.0);
                    let text = value_label(value, unit);
                    canvas.text(
                        Font::Regular,
                        LABEL_SIZE,
                        zero.max(end) + 3.0,
                        baseline,
                        &text,
                    );
                }
                None => canvas.text(Font::Regular, LABEL_SIZE, zero + 3.0, baseline, "n/a"),
            }
        }
        let bottom = top - fitting as f32 * row_height;
        value_axis(canvas, &axis, plot_left, plot_width, top, bottom);
        canvas.y = bottom - axis_height;
        next += fitting;
        if next >= bars.len() {
            break;
        }
        canvas.new_page();
    }
    canvas.y -= BODY_SIZE * LINE_SPACING;
}

/// Draws the horizontal value axis of a bar chart below `bottom`, with light grid lines up to
/// `top`.
fn value_axis(canvas: &mut Canvas, axis: &Axis, left: f32, width: f32, top: f32, bottom: f32) {
    for tick in axis.ticks() {
        let x = left + axis.position(tick, width);
        let content = canvas.content();
        content.set_stroke_gray(0.85);
        content.set_line_width(0.4);
        content.move_to(x, top);
        content.line_to(x, bottom);
        content.stroke();
        let label = axis.label(tick);
        let label_width = text_width(&label, Font::Regular, LABEL_SIZE);
        let baseline = bottom - LABEL_SIZE - 3.0;
        canvas.text(
            Font::Regular,
            LABEL_SIZE,
            x - label_width / 2.0,
            baseline,
            &label,
        );
    }
    let content = canvas.content();
    content.set_stroke_gray(0.0);
    content.set_line_width(0.7);
    content.move_to(left, bottom);
    content.line_to(left + width, bottom);
    content.stroke();
}

/// Draws a line chart of one or more series over the same labels.
pub(crate) fn line_chart(
    canvas: &mut Canvas,
    chart_title: &str,
    labels: &[String],
    series: &[Series],
    unit: &str,
) {
    let legend = series.len() > 1;
    let legend_height = if legend {
        series.len() as f32 * LABEL_SIZE * LINE_SPACING + 4.0
    } else {
        0.0
    };
    let height = TITLE_SIZE * LINE_SPACING + 4.0 + PLOT_HEIGHT + LABEL_SIZE * 4.5 + legend_height;
    canvas.ensure(height);
    title(canvas, chart_title);

    let points = labels.len().max(1);
    let values: Vec<Vec<Option<f64>>> = series
        .iter()
        .map(|series| {
            (0..points)
                .map(|index| series.values.get(index).copied().flatten().and_then(finite))
                .collect()
        })
        .collect();
    let present: Vec<f64> = values.iter().flatten().flatten().copied().collect();
    let low = present.iter().copied().fold(f64::INFINITY, f64::min);
    let high = present.iter().copied().fold(f64::NEG_INFINITY, f64::max);

    let unit_label = truncate_to_width(unit, Font::Regular, LABEL_SIZE, 60.0);
    let axis = if present.is_empty() {
        Axis::covering(0.0, 1.0)
    } else {
        Axis::covering(low, high)
    };
    let tick_width = axis
        .ticks()
        .iter()
        .map(|tick| text_width(&axis.label(*tick), Font::Regular, LABEL_SIZE))
        .fold(text_width(&unit_label, Font::Regular, LABEL_SIZE), f32::max);
    let left = MARGIN + tick_width + 6.0;
    let width = TEXT_WIDTH - tick_width - 12.0;
    let top = canvas.y - LABEL_SIZE * 2.0;
    let bottom = top - PLOT_HEIGHT;

    canvas.text(
        Font::Regular,
        LABEL_SIZE,
        MARGIN,
        top + LABEL_SIZE,
        &unit_label,
    );
    for tick in axis.ticks() {
        let y = bottom + axis.position(tick, PLOT_HEIGHT);
        let content = canvas.content();
        content.set_stroke_gray(0.85);
        content.set_line_width(0.4);
        content.move_to(left, y);
        content.line_to(left + width, y);
        content.stroke();
        let label = axis.label(tick);
        let x = left - 4.0 - text_width(&label, Font::Regular, LABEL_SIZE);
        canvas.text(Font::Regular, LABEL_SIZE, x, y - LABEL_SIZE * 0.35, &label);
    }
    let content = canvas.content();
    content.set_stroke_gray(0.0);
    content.set_line_width(0.7);
    content.move_to(left, top);
    content.line_to(left, bottom);
    content.line_to(left + width, bottom);
    content.stroke();

    // Labels sit under their points; when they would overlap, only every n-th is printed.
    let spacing = width / points as f32;
    let x_of = |index: usize| left + spacing * (index as f32 + 0.5);
    let widest = labels
        .iter()
        .map(|label| text_width(label, Font::Regular, LABEL_SIZE))
        .fold(0.0, f32::max);
    let every = ((widest + 6.0) / spacing).ceil().max(1.0) as usize;
    for (index, label) in labels.iter().enumerate().step_by(every) {
        let label = truncate_to_width(label, Font::Regular, LABEL_SIZE, spacing * every as f32);
        let x = x_of(index) - text_width(&label, Font::Regular, LABEL_SIZE) / 2.0;
        canvas.text(
            Font::Regular,
            LABEL_SIZE,
            x,
            bottom - LABEL_SIZE - 3.0,
            &label,
        );
    }

    if present.is_empty() {
        let message = "No values to plot";
        let x = left + (width - text_width(message, Font::Regular, LABEL_SIZE)) / 2.0;
        canvas.text(
            Font::Regular,
            LABEL_SIZE,
            x,
            bottom + PLOT_HEIGHT / 2.0,
            message,
        );
    }
    for (number, points) in values.iter().enumerate() {
        let dash = DASHES[number % DASHES.len()];
        let gray = if number < DASHES.len() { 0.0 } else { 0.5 };
        let content = canvas.content();
        content.set_stroke_gray(gray);
        content.set_fill_gray(gray);
        content.set_line_width(1.4);
        content.set_dash_pattern(dash.iter().copied(), 0.0);
        let mut drawing = false;
        for (index, value) in points.iter().enumerate() {
            match value {
                Some(value) => {
                    let (x, y) = (x_of(index), bottom + axis.position(*value, PLOT_HEIGHT));
                    if drawing {
                        content.line_to(x, y);
                    } else {
                        content.move_to(x, y);
                        drawing = true;
                    }
                }
                None => drawing = false,
            }
        }
        content.stroke();
        for (index, value) in points.iter().enumerate() {
            if let Some(value) = value {
                let (x, y) = (x_of(index), bottom + axis.position(*value, PLOT_HEIGHT));
                content.rect(x - 2.0, y - 2.0, 4.0, 4.0);
            }
        }
        content.fill_nonzero();
        content.set_dash_pattern(std::iter::empty::<f32>(), 0.0);
        content.set_stroke_gray(0.0);
        content.set_fill_gray(0.0);
    }
    canvas.y = bottom - LABEL_SIZE * 2.5;

    if legend {
        for (number, series) in series.iter().enumerate() {
            let baseline = canvas.y - LABEL_SIZE;
            let dash = DASHES[number % DASHES.len()];
            let gray = if number < DASHES.len() { 0.0 } else { 0.5 };
            let content = canvas.content();
            content.set_stroke_gray(gray);
            content.set_line_width(1.4);
            content.set_dash_pattern(dash.iter().copied(), 0.0);
            content.move_to(left, baseline + LABEL_SIZE * 0.3);
            content.line_to(left + 24.0, baseline + LABEL_SIZE * 0.3);
            content.stroke();
            content.set_dash_pattern(std::iter::empty::<f32>(), 0.0);
            content.set_stroke_gray(0.0);
            let name = truncate_to_width(&series.name, Font::Regular, LABEL_SIZE, width - 30.0);
            canvas.text(Font::Regular, LABEL_SIZE, left + 30.0, baseline, &name);
            canvas.y -= LABEL_SIZE * LINE_SPACING;
        }
        canvas.y -= 4.0;
    }
    canvas.y -= BODY_SIZE * LINE_SPACING;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_takes_round_steps() {
        let axis = Axis::covering(0.0, 23.0);
        assert_eq!(axis.step, 5.0);
        assert_eq!(axis.ticks(), [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]);
    }

    #[test]
    fn axis_around_attendance() {
        let axis = Axis::covering(91.3, 95.8);
        assert_eq!(axis.step, 1.0);
        assert_eq!(axis.low, 91.0);
        assert_eq!(axis.high, 96.0);
        assert_eq!(axis.label(92.0), "92");
    }

    #[test]
    fn axis_of_one_value() {
        let axis = Axis::covering(7.0, 7.0);
        assert!(axis.low < 7.0, "{axis:?}");
        assert!(axis.high > 7.0, "{axis:?}");
    }

    #[test]
    fn axis_ticks_are_bounded() {
        let axis = Axis::covering(1e12 - 1e-3, 1e12);
        assert!(axis.ticks().len() <= 13);
    }

    #[test]
    fn values_carry_their_unit() {
        assert_eq!(value_label(12.5, "%"), "12.5%");
        assert_eq!(value_label(3.0, "pupils"), "3 pupils");
        assert_eq!(value_label(3.0, ""), "3");
    }
}
