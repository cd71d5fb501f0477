//! Value types written the way humans write them: durations (`"30m"`), byte
//! sizes (`"16MiB"`) and CPU lists (`"0-7,16"`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration in the config: `"90s"`, `"30m"`, `"1h 30m"`, `"250ms"`, or `0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// A duration of whole seconds.
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    /// A duration of milliseconds.
    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// Whether this is zero (used for "off" / "never").
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t == "0" {
            return Ok(Self(Duration::ZERO));
        }
        humantime::parse_duration(t).map(Self).map_err(|e| {
            format!("`{s}` is not a duration ({e}); write e.g. \"90s\", \"30m\", \"1h\"")
        })
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"90s\" or \"30m\", or 0")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                if v == 0 {
                    Ok(HumanDuration(Duration::ZERO))
                } else if v < 0 {
                    Err(E::custom("a duration cannot be negative"))
                } else {
                    Err(E::custom(format!(
                        "a bare number is ambiguous: write \"{v}s\" (or \"{v}m\", \"{v}ms\")"
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size in bytes: `"16MiB"`, `"512KiB"`, `"1GB"`, or a plain integer of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, size) in UNITS {
            if self.0 >= size && self.0 % size == 0 {
                return write!(f, "{}{name}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("`{s}` is not a size; write e.g. \"16MiB\", \"512KiB\", \"2GB\"");
        let n: f64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KB" | "k" | "kB" => 1_000,
            "KiB" | "Ki" => 1 << 10,
            "M" | "MB" => 1_000_000,
            "MiB" | "Mi" => 1 << 20,
            "G" | "GB" => 1_000_000_000,
            "GiB" | "Gi" => 1 << 30,
            "T" | "TB" => 1_000_000_000_000,
            "TiB" | "Ti" => 1 << 40,
            _ => return Err(bad()),
        };
        let bytes = n * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(Self(bytes.round() as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"16MiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_humans_write_them() {
        assert_eq!(
            "90s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(90)
        );
        assert_eq!(
            "30m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(1800)
        );
        assert_eq!(
            "1h 30m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(5400)
        );
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert!("0".parse::<HumanDuration>().unwrap().is_zero());
        assert!("soon".parse::<HumanDuration>().is_err());
        assert!("30".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn durations_in_toml() {
        #[derive(Deserialize)]
        struct T {
            a: HumanDuration,
            b: HumanDuration,
        }
        let t: T = toml::from_str("a = \"2m\"\nb = 0").unwrap();
        assert_eq!(t.a.0, Duration::from_secs(120));
        assert!(t.b.is_zero());
        let e = toml::from_str::<T>("a = 30\nb = 0")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("\"30s\""), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!("16MiB".parse::<ByteSize>().unwrap().0, 16 << 20);
        assert_eq!("1GB".parse::<ByteSize>().unwrap().0, 1_000_000_000);
        assert_eq!("1.5GiB".parse::<ByteSize>().unwrap().0, 3 << 29);
        assert_eq!("100".parse::<ByteSize>().unwrap().0, 100);
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(16 << 20).to_string(), "16MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }
}

/// A CPU list as systemd's `AllowedCPUs=` takes it: `"0-7,16"`. Parsed once, when
/// the configuration is checked; rendered as written (unit files) and as a bit
/// mask (D-Bus).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList {
    text: String,
    ranges: Vec<(u32, u32)>,
}

impl CpuList {
    /// Parse `"0-7,16"`: comma-separated CPUs and ascending ranges.
    pub fn parse(text: &str) -> Option<Self> {
        if text.trim().is_empty() {
            return None;
        }
        let ranges = text
            .split(',')
            .map(|part| {
                let mut ends = part.trim().splitn(2, '-').map(|n| n.trim().parse::<u32>());
                match (ends.next(), ends.next()) {
                    (Some(Ok(a)), None) => Some((a, a)),
                    (Some(Ok(a)), Some(Ok(b))) if a <= b && b < 8192 => Some((a, b)),
                    _ => None,
                }
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            text: text.trim().to_string(),
            ranges,
        })
    }

    /// As written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The bit mask systemd's D-Bus API takes: bit `n % 8` of byte `n / 8` for CPU `n`.
    pub fn mask(&self) -> Vec<u8> {
        let mut mask = Vec::new();
        for &(a, b) in &self.ranges {
            for cpu in a as usize..=b as usize {
                if mask.len() <= cpu / 8 {
                    mask.resize(cpu / 8 + 1, 0);
                }
                mask[cpu / 8] |= 1 << (cpu % 8);
            }
        }
        mask
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod cpu_list_tests {
    use super::CpuList;

    #[test]
    fn parses_and_masks() {
        let c = CpuList::parse("0-2,9").unwrap();
        assert_eq!(c.as_str(), "0-2,9");
        assert_eq!(c.mask(), vec![0b0000_0111, 0b0000_0010]);
        for bad in ["", "3-1", "a", "1,", "-1", "0-99999"] {
            assert!(CpuList::parse(bad).is_none(), "{bad}");
        }
    }
}
