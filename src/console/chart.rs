//! A key's usage over time as an SVG bar chart (valid and refused verifications stacked per
//! hour or per day), with the same figures as a table for screen readers. Drawn on the
//! server: no script, and presentation attributes only (the CSP allows no inline style).

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use maud::{Markup, html};

use crate::domain::{policy::VerifyCode, usage_log::KeyUsage};

/// The chart's span: 24 hours by the hour, or 30 days by the day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    Day,
    Month,
}

impl Span {
    pub fn parse(text: &str) -> Self {
        if text == "30d" { Span::Month } else { Span::Day }
    }

    pub fn param(self) -> &'static str {
        match self {
            Span::Day => "24h",
            Span::Month => "30d",
        }
    }

    fn step(self) -> Duration {
        match self {
            Span::Day => Duration::from_secs(3600),
            Span::Month => Duration::from_secs(86_400),
        }
    }

    fn buckets(self) -> u32 {
        match self {
            Span::Day => 24,
            Span::Month => 30,
        }
    }

    /// The buckets' `[start, end)`, oldest first, the last one holding `now`.
    pub fn ranges(self, now: SystemTime) -> Vec<(SystemTime, SystemTime)> {
        let step = self.step();
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let last_start = UNIX_EPOCH + Duration::from_secs(since_epoch - since_epoch % step.as_secs());
        (0..self.buckets()).rev().map(|i| last_start - step * i).map(|start| (start, start + step)).collect()
    }
}

/// One bucket's counts.
pub struct Bucket {
    pub start: SystemTime,
    pub by_code: BTreeMap<VerifyCode, u64>,
}

impl Bucket {
    pub fn of(start: SystemTime, usage: &KeyUsage) -> Self {
        Self { start, by_code: usage.by_code.clone() }
    }

    fn valid(&self) -> u64 {
        self.by_code.get(&VerifyCode::Valid).copied().unwrap_or(0)
    }

    fn refused(&self) -> u64 {
        self.by_code.iter().filter(|(c, _)| **c != VerifyCode::Valid).map(|(_, n)| n).sum()
    }
}

const WIDTH: u32 = 720;
const HEIGHT: u32 = 180;
const BASE: u32 = 160;

pub fn render(span: Span, buckets: &[Bucket]) -> Markup {
    let max = buckets.iter().map(|b| b.valid() + b.refused()).max().unwrap_or(0).max(1);
    let slot = WIDTH / buckets.len().max(1) as u32;
    let bar = slot.saturating_sub(2).max(1);
    let scale = |n: u64| ((n as f64 / max as f64) * f64::from(BASE - 10)).round() as u32;
    let label = |t: SystemTime| {
        let text = humantime::format_rfc3339_seconds(t).to_string();
        match span {
            Span::Day => text[11..16].to_owned(),
            Span::Month => text[5..10].to_owned(),
        }
    };
    let codes: Vec<VerifyCode> = {
        let mut all: Vec<VerifyCode> = buckets.iter().flat_map(|b| b.by_code.keys().copied()).collect();
        all.sort();
        all.dedup();
        all
    };
    let total: u64 = buckets.iter().map(|b| b.valid() + b.refused()).sum();
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-labelledby="chart-title" preserveAspectRatio="none" {
                title #chart-title { "Verifications per " (if span == Span::Day { "hour" } else { "day" }) ": " (total) " in all; highest " (max) }
                line x1="0" y1=(BASE) x2=(WIDTH) y2=(BASE) stroke="#8a8f98" stroke-width="1" {}
                @for (i, b) in buckets.iter().enumerate() {
                    @let x = i as u32 * slot + 1;
                    @let valid = scale(b.valid());
                    @let refused = scale(b.refused());
                    rect.valid x=(x) y=(BASE - valid) width=(bar) height=(valid) fill="#2e7d32" {
                        title { (label(b.start)) ": " (b.valid()) " valid" }
                    }
                    rect.refused x=(x) y=(BASE - valid - refused) width=(bar) height=(refused) fill="#c62828" {
                        title { (label(b.start)) ": " (b.refused()) " refused" }
                    }
                    @if i % (buckets.len() / 6).max(1) == 0 {
                        text x=(x) y=(HEIGHT - 4) font-size="11" fill="#555" { (label(b.start)) }
                    }
                }
            }
            figcaption {
                span.legend.valid { "valid" } " " span.legend.refused { "refused" }
                " — " (total) " verifications, highest " (max) " per " (if span == Span::Day { "hour" } else { "day" }) "."
            }
            details {
                summary { "Show as a table" }
                div.scroll {
                    table {
                        thead { tr { th scope="col" { "From" } @for c in &codes { th scope="col" { (c.name()) } } } }
                        tbody {
                            @for b in buckets.iter().filter(|b| !b.by_code.is_empty()) {
                                tr {
                                    td { (humantime::format_rfc3339_seconds(b.start)) }
                                    @for c in &codes { td { (b.by_code.get(c).copied().unwrap_or(0)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_aligned_contiguous_and_end_with_now() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_123);
        let day = Span::Day.ranges(now);
        assert_eq!(day.len(), 24);
        assert!(day.windows(2).all(|w| w[0].1 == w[1].0));
        let (start, end) = *day.last().unwrap();
        assert!(start <= now && now < end);
        assert_eq!(start.duration_since(UNIX_EPOCH).unwrap().as_secs() % 3600, 0);
        assert_eq!(Span::Month.ranges(now).len(), 30);
        assert_eq!(Span::parse("30d"), Span::Month);
        assert_eq!(Span::parse("junk"), Span::Day);
    }

    #[test]
    fn bars_split_valid_from_refused() {
        let mut by_code = BTreeMap::new();
        by_code.insert(VerifyCode::Valid, 3);
        by_code.insert(VerifyCode::Revoked, 2);
        let b = Bucket { start: UNIX_EPOCH, by_code };
        assert_eq!((b.valid(), b.refused()), (3, 2));
        let svg = render(Span::Day, &[b]).into_string();
        assert!(svg.contains("3 valid") && svg.contains("2 refused") && svg.contains("REVOKED"), "{svg}");
    }
}
