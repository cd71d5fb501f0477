//! Profiles: which models may run now, from daily windows in host local time and
//! an operator's override; when the next switch happens; how long until a model is
//! allowed (`Retry-After`). The clock is injectable so tests never wait for 2 AM.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDateTime, TimeDelta, TimeZone, Timelike};
use tokio::sync::Notify;

use crate::config::ProfileSpec;

/// Set to a local date and time (`2025-06-01T01:59:50`) to start llmvisor's clock
/// there (it then runs at normal speed) and to enable `POST /admin/test/clock`.
/// For tests and demos only; a warning says so at start.
pub const TEST_CLOCK_ENV: &str = "LLMVISOR_TEST_CLOCK";

/// Wall-clock time in the host's zone, possibly shifted for tests.
pub struct Clock {
    offset: Mutex<TimeDelta>,
    test: bool,
    /// Woken when a test moves the clock.
    pub moved: Notify,
}

/// Parse `2025-06-01T01:59:50` (or with a space) as local time.
pub fn parse_local(s: &str) -> Result<DateTime<Local>, String> {
    let s = s.trim();
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S"))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M"))
        .map_err(|_| format!("`{s}` is not a local time like 2025-06-01T01:59:50"))?;
    Local
        .from_local_datetime(&naive)
        .earliest()
        .ok_or_else(|| format!("`{s}` does not exist in the local time zone"))
}

impl Clock {
    /// The real clock, or a shifted one when [`TEST_CLOCK_ENV`] is set.
    pub fn from_env() -> Self {
        let mut c = Self::real();
        if let Ok(v) = std::env::var(TEST_CLOCK_ENV) {
            match parse_local(&v) {
                Ok(t) => {
                    tracing::warn!(
                        "{TEST_CLOCK_ENV} is set: llmvisor's clock starts at {t} and can be moved with POST /admin/test/clock — for tests only"
                    );
                    c.test = true;
                    c.set(t);
                }
                Err(e) => tracing::error!("{TEST_CLOCK_ENV} ignored: {e}"),
            }
        }
        c
    }

    /// The real clock.
    pub fn real() -> Self {
        Self {
            offset: Mutex::new(TimeDelta::zero()),
            test: false,
            moved: Notify::new(),
        }
    }

    /// A test clock that reads `t` now (moved with [`Clock::set`]).
    pub fn test_at(t: DateTime<Local>) -> Self {
        let c = Self {
            test: true,
            ..Self::real()
        };
        c.set(t);
        c
    }

    /// Whether the test clock is enabled.
    pub fn is_test(&self) -> bool {
        self.test
    }

    /// Now, in local time.
    pub fn now(&self) -> DateTime<Local> {
        Local::now() + *self.offset.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make it `t` now (tests).
    pub fn set(&self, t: DateTime<Local>) {
        *self.offset.lock().unwrap_or_else(|e| e.into_inner()) = t - Local::now();
        self.moved.notify_waiters();
    }
}

/// An operator's choice: only this profile is active, until `until` (or until
/// they resume the schedule).
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    /// The profile.
    pub profile: String,
    /// When the override ends.
    pub until: Option<DateTime<Local>>,
}

/// The profiles in force and the override.
pub struct Schedule {
    profiles: Vec<ProfileSpec>,
    over: Mutex<Option<Override>>,
    /// Woken when the override changes.
    pub changed: Notify,
}

/// Minute steps scanned for the next switch or the next allowed time (two days).
const SCAN_MINUTES: i64 = 2 * 24 * 60;

impl Schedule {
    /// A schedule of these profiles, keeping `over` when its profile still exists.
    pub fn new(profiles: Vec<ProfileSpec>, over: Option<Override>) -> Self {
        let over = over.filter(|o| profiles.iter().any(|p| p.name == o.profile));
        Self {
            profiles,
            over: Mutex::new(over),
            changed: Notify::new(),
        }
    }

    /// Whether any profile is configured.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// The profiles.
    pub fn profiles(&self) -> &[ProfileSpec] {
        &self.profiles
    }

    /// The override in force at `now` (an expired one is dropped).
    pub fn override_at(&self, now: DateTime<Local>) -> Option<Override> {
        let mut o = self.over.lock().unwrap_or_else(|e| e.into_inner());
        if o.as_ref().and_then(|o| o.until).is_some_and(|u| u <= now) {
            *o = None;
        }
        o.clone()
    }

    /// Activate `profile` by hand until `until`.
    pub fn activate(&self, profile: &str, until: Option<DateTime<Local>>) -> Result<(), String> {
        if !self.profiles.iter().any(|p| p.name == profile) {
            let names: Vec<_> = self.profiles.iter().map(|p| p.name.as_str()).collect();
            return Err(format!(
                "no profile `{profile}`; profiles: {}",
                names.join(", ")
            ));
        }
        *self.over.lock().unwrap_or_else(|e| e.into_inner()) = Some(Override {
            profile: profile.to_string(),
            until,
        });
        self.changed.notify_waiters();
        Ok(())
    }

    /// Back to the windows.
    pub fn resume(&self) {
        *self.over.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.changed.notify_waiters();
    }

    /// The profiles active at `t`, in name order.
    pub fn active_at(&self, t: DateTime<Local>) -> Vec<String> {
        let over = self.over.lock().unwrap_or_else(|e| e.into_inner()).clone();
        active(&self.profiles, over.as_ref(), t)
    }

    /// Whether `model` may run at `t`.
    pub fn allowed_at(&self, model: &str, t: DateTime<Local>) -> bool {
        let over = self.over.lock().unwrap_or_else(|e| e.into_inner()).clone();
        allowed(&self.profiles, over.as_ref(), model, t)
    }

    /// Whether the profiles govern `model` at all.
    pub fn governs(&self, model: &str) -> bool {
        self.profiles
            .iter()
            .any(|p| p.models.iter().any(|m| m == model))
            || self.profiles.iter().any(|p| p.exclusive)
    }

    /// If `model` may not run at `now`: how long until it may (None: not within two
    /// days) and the profiles that allow it.
    pub fn refusal(
        &self,
        model: &str,
        now: DateTime<Local>,
    ) -> Option<(Option<Duration>, Vec<String>)> {
        let over = self.over.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if allowed(&self.profiles, over.as_ref(), model, now) {
            return None;
        }
        let wait = next_time(now, over.as_ref(), |t| {
            allowed(&self.profiles, over.as_ref(), model, t)
        })
        .map(|t| (t - now).to_std().unwrap_or_default());
        let allowing = self
            .profiles
            .iter()
            .filter(|p| p.models.iter().any(|m| m == model))
            .map(|p| p.name.clone())
            .collect();
        Some((wait, allowing))
    }

    /// When the set of active profiles next changes after `now`.
    pub fn next_switch(&self, now: DateTime<Local>) -> Option<DateTime<Local>> {
        let over = self.over.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let current = active(&self.profiles, over.as_ref(), now);
        next_time(now, over.as_ref(), |t| {
            active(&self.profiles, over.as_ref(), t) != current
        })
    }
}

/// The first moment after `now` (within two days) where `pred` holds: the end of
/// an override, or a minute boundary (windows are in whole minutes).
fn next_time(
    now: DateTime<Local>,
    over: Option<&Override>,
    pred: impl Fn(DateTime<Local>) -> bool,
) -> Option<DateTime<Local>> {
    let minute = now.with_second(0)?.with_nanosecond(0)?;
    let end = over.and_then(|o| o.until).filter(|u| *u > now);
    let mut times: Vec<DateTime<Local>> = (1..=SCAN_MINUTES)
        .map(|k| minute + TimeDelta::minutes(k))
        .collect();
    if let Some(e) = end {
        let at = times.partition_point(|t| *t < e);
        times.insert(at, e);
    }
    times.into_iter().find(|t| pred(*t))
}

/// Active profiles at `t`: the override's alone while it lasts, else every profile
/// whose window holds `t`.
pub fn active(
    profiles: &[ProfileSpec],
    over: Option<&Override>,
    t: DateTime<Local>,
) -> Vec<String> {
    if let Some(o) = over
        && o.until.is_none_or(|u| t < u)
    {
        return vec![o.profile.clone()];
    }
    let m = t.hour() * 60 + t.minute();
    profiles
        .iter()
        .filter(|p| p.windows.iter().any(|w| w.contains(m)))
        .map(|p| p.name.clone())
        .collect()
}

/// A model may run when an active profile lists it, or when no profile lists it and
/// no active profile is exclusive.
pub fn allowed(
    profiles: &[ProfileSpec],
    over: Option<&Override>,
    model: &str,
    t: DateTime<Local>,
) -> bool {
    let on = active(profiles, over, t);
    let listed_by = |p: &ProfileSpec| p.models.iter().any(|m| m == model);
    if profiles
        .iter()
        .filter(|p| on.contains(&p.name))
        .any(listed_by)
    {
        return true;
    }
    let scheduled = profiles.iter().any(listed_by);
    let exclusive = profiles.iter().any(|p| p.exclusive && on.contains(&p.name));
    !scheduled && !exclusive
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Window;

    fn profiles() -> Vec<ProfileSpec> {
        vec![
            ProfileSpec {
                name: "day".into(),
                windows: vec![Window::parse("06:00-02:00").unwrap()],
                models: vec!["llama".into()],
                preload: vec![],
                exclusive: false,
                drain_timeout: Duration::from_secs(60),
            },
            ProfileSpec {
                name: "night".into(),
                windows: vec![Window::parse("02:00-06:00").unwrap()],
                models: vec!["big".into()],
                preload: vec!["big".into()],
                exclusive: true,
                drain_timeout: Duration::from_secs(60),
            },
        ]
    }

    fn at(s: &str) -> DateTime<Local> {
        parse_local(s).unwrap()
    }

    #[test]
    fn windows_and_exclusivity() {
        let p = profiles();
        assert_eq!(active(&p, None, at("2025-06-01T01:59:00")), ["day"]);
        assert_eq!(active(&p, None, at("2025-06-01T02:00:00")), ["night"]);
        assert!(allowed(&p, None, "llama", at("2025-06-01T12:00:00")));
        assert!(!allowed(&p, None, "big", at("2025-06-01T12:00:00")));
        // An unscheduled model runs by day, not while the exclusive night runs.
        assert!(allowed(&p, None, "embed", at("2025-06-01T12:00:00")));
        assert!(!allowed(&p, None, "embed", at("2025-06-01T03:00:00")));
    }

    #[test]
    fn retry_after_and_next_switch() {
        let s = Schedule::new(profiles(), None);
        let now = at("2025-06-01T01:30:20");
        let (wait, by) = s.refusal("big", now).unwrap();
        assert_eq!(wait, Some(Duration::from_secs(29 * 60 + 40)));
        assert_eq!(by, ["night"]);
        assert!(s.refusal("llama", now).is_none());
        assert_eq!(s.next_switch(now), Some(at("2025-06-01T02:00:00")));
        let (wait, _) = s.refusal("llama", at("2025-06-01T03:00:00")).unwrap();
        assert_eq!(wait, Some(Duration::from_secs(3 * 3600)));
    }

    #[test]
    fn override_for_a_while() {
        let s = Schedule::new(profiles(), None);
        let now = at("2025-06-01T12:00:00");
        s.activate("night", Some(now + TimeDelta::hours(2)))
            .unwrap();
        assert_eq!(s.active_at(now), ["night"]);
        assert!(!s.allowed_at("llama", now));
        let (wait, _) = s.refusal("llama", now).unwrap();
        assert_eq!(wait, Some(Duration::from_secs(7200)));
        assert_eq!(s.active_at(now + TimeDelta::hours(3)), ["day"]);
        assert!(s.override_at(now + TimeDelta::hours(3)).is_none());
        assert!(s.activate("dusk", None).is_err());
    }
}
