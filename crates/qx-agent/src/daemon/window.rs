//! The maintenance window (`updates.maintenance_window`): a recurring local-time window in
//! which automatic updates may be applied, its parser, and when it next opens.

use jiff::civil::{DateTime, Time, Weekday};
use jiff::Zoned;

/// A recurring local-time window in which automatic updates may be applied:
/// `"Sun 02:00-04:00"`, `"Mon-Fri 01:00-03:30"`, `"Sat,Sun 22:00-02:00"` (crosses midnight:
/// belongs to the day it starts on), `"daily 03:00-04:00"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceWindow {
    /// Days the window starts on; all seven for `daily`.
    pub days: Vec<Weekday>,
    pub start: Time,
    pub end: Time,
    text: String,
}

impl std::fmt::Display for MaintenanceWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

const ALL_DAYS: [Weekday; 7] = [
    Weekday::Monday,
    Weekday::Tuesday,
    Weekday::Wednesday,
    Weekday::Thursday,
    Weekday::Friday,
    Weekday::Saturday,
    Weekday::Sunday,
];

fn weekday(s: &str) -> Option<Weekday> {
    Some(match s.to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return None,
    })
}

fn hhmm(s: &str) -> Option<Time> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: i8 = h.parse().ok()?;
    let m: i8 = m.parse().ok()?;
    if h == 24 && m == 0 {
        return Time::new(23, 59, 59, 999_999_999).ok();
    }
    Time::new(h, m, 0, 0).ok()
}

impl MaintenanceWindow {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("{text:?} is not a window such as \"Sun 02:00-04:00\", \"Mon-Fri 01:00-03:00\" or \"daily 03:00-04:00\": {why}")
        };
        let mut parts = text.split_whitespace();
        let (days_part, times_part) = match (parts.next(), parts.next(), parts.next()) {
            (Some(d), Some(t), None) => (d, t),
            (Some(t), None, None) => ("daily", t),
            _ => return Err(bad("expected DAYS HH:MM-HH:MM")),
        };
        let mut days = Vec::new();
        if matches!(
            days_part.to_ascii_lowercase().as_str(),
            "daily" | "*" | "every"
        ) {
            days.extend(ALL_DAYS);
        } else {
            for item in days_part.split(',') {
                if let Some((a, b)) = item.split_once('-') {
                    let a = weekday(a).ok_or_else(|| bad(&format!("unknown day {a:?}")))?;
                    let b = weekday(b).ok_or_else(|| bad(&format!("unknown day {b:?}")))?;
                    let mut d = a;
                    for _ in 0..7 {
                        if !days.contains(&d) {
                            days.push(d);
                        }
                        if d == b {
                            break;
                        }
                        d = d.wrapping_add(1);
                    }
                } else {
                    let d = weekday(item).ok_or_else(|| bad(&format!("unknown day {item:?}")))?;
                    if !days.contains(&d) {
                        days.push(d);
                    }
                }
            }
        }
        let (s, e) = times_part
            .split_once('-')
            .ok_or_else(|| bad("expected HH:MM-HH:MM"))?;
        let start = hhmm(s).ok_or_else(|| bad(&format!("bad start time {s:?}")))?;
        let end = hhmm(e).ok_or_else(|| bad(&format!("bad end time {e:?}")))?;
        if start == end {
            return Err(bad("the window is empty (start equals end)"));
        }
        Ok(Self {
            days,
            start,
            end,
            text: text.to_owned(),
        })
    }

    /// True when the local date-time `at` falls inside the window.
    pub fn contains(&self, at: DateTime) -> bool {
        let t = at.time();
        let day = at.weekday();
        if self.start < self.end {
            self.days.contains(&day) && t >= self.start && t < self.end
        } else {
            // Crosses midnight: the evening part belongs to `day`, the morning part to the day before.
            (self.days.contains(&day) && t >= self.start)
                || (self.days.contains(&day.wrapping_sub(1)) && t < self.end)
        }
    }
}

/// The next moment at or after `now` at which `window` is open: `now` itself when it is open.
/// `None` when it does not open within eight days (a window without days).
pub fn next_open(window: &MaintenanceWindow, now: &Zoned) -> Option<Zoned> {
    if window.contains(now.datetime()) {
        return Some(now.clone());
    }
    let tz = now.time_zone().clone();
    let mut date = now.date();
    for _ in 0..8 {
        if window.days.contains(&date.weekday()) {
            if let Ok(open) = date.to_datetime(window.start).to_zoned(tz.clone()) {
                if open > *now {
                    return Some(open);
                }
            }
        }
        date = date.tomorrow().ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-22 is a Sunday.
    fn at(s: &str) -> Zoned {
        s.parse().expect("test time")
    }

    #[test]
    fn window_contains() {
        let w = MaintenanceWindow::parse("Sun 02:00-04:00").expect("window");
        // 2026-11-29 is a Sunday.
        let at = |d: i8, h: i8, m: i8| jiff::civil::date(2026, 11, d).at(h, m, 0, 0);
        assert!(w.contains(at(29, 2, 0)));
        assert!(w.contains(at(29, 3, 59)));
        assert!(!w.contains(at(29, 4, 0)));
        assert!(!w.contains(at(28, 3, 0)));
        let night = MaintenanceWindow::parse("Sat 22:00-02:00").expect("window");
        assert!(night.contains(at(28, 23, 0)));
        assert!(night.contains(at(29, 1, 0)));
        assert!(!night.contains(at(29, 23, 0)));
        let weekdays = MaintenanceWindow::parse("Mon-Fri 01:00-03:00").expect("window");
        assert!(weekdays.contains(jiff::civil::date(2026, 11, 27).at(1, 30, 0, 0)));
        assert!(!weekdays.contains(at(29, 1, 30)));
    }

    #[test]
    fn next_open_finds_the_coming_opening() {
        let w = MaintenanceWindow::parse("Sun 02:00-04:00").expect("window");
        assert_eq!(
            next_open(&w, &at("2026-11-20T10:00[UTC]")),
            Some(at("2026-11-22T02:00[UTC]"))
        );
        let inside = at("2026-11-22T03:00[UTC]");
        assert_eq!(next_open(&w, &inside), Some(inside.clone()));
        assert_eq!(
            next_open(&w, &at("2026-11-22T05:00[UTC]")),
            Some(at("2026-11-29T02:00[UTC]"))
        );
        let night = MaintenanceWindow::parse("Sat 23:00-01:00").expect("window");
        assert_eq!(
            next_open(&night, &at("2026-11-22T00:30[UTC]")),
            Some(at("2026-11-22T00:30[UTC]"))
        );
    }
}
