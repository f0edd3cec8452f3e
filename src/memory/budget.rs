//! Budget arithmetic as pure functions: what a budget setting means on a device of a given size, how much is
//! free within it, and whether a load fits. No probing here (probe.rs), so every rule is unit-tested with any
//! device size.

use bytesize::ByteSize;
use serde::Serialize;
use std::str::FromStr;

/// A memory limit: bytes, or a fraction of the device's total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Bytes(u64),
    Fraction(f64),
}

impl Limit {
    /// The limit in bytes on a device of `total` bytes (never above the total).
    pub fn resolve(self, total: u64) -> u64 {
        match self {
            Limit::Bytes(b) => b.min(total),
            Limit::Fraction(f) => (total as f64 * f) as u64,
        }
    }
}

impl FromStr for Limit {
    type Err = String;

    /// `0.9` or `90%` (a fraction of the device), or a size: `8GiB`, `512 MiB`, `2GB`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let fraction = match s.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().ok().map(|p| p / 100.0),
            None if !s.chars().any(|c| c.is_ascii_alphabetic()) => s.parse::<f64>().ok().filter(|f| *f <= 1.0),
            None => None,
        };
        if let Some(f) = fraction {
            return if f > 0.0 && f <= 1.0 {
                Ok(Limit::Fraction(f))
            } else {
                Err(format!("memory budget '{s}': a fraction must be in (0, 1]"))
            };
        }
        let bytes = ByteSize::from_str(s).map_err(|e| format!("memory budget '{s}': {e} (use 0.9, 90% or 8GiB)"))?;
        if bytes.as_u64() == 0 {
            return Err(format!("memory budget '{s}' is zero"));
        }
        Ok(Limit::Bytes(bytes.as_u64()))
    }
}

/// `--memory-budget` values: a default for every device and overrides per device (`cuda:0=60GiB`).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSpec {
    pub default: Limit,
    pub per_device: Vec<(String, Limit)>,
}

impl Default for BudgetSpec {
    fn default() -> Self {
        BudgetSpec { default: Limit::Fraction(0.9), per_device: vec![] }
    }
}

impl BudgetSpec {
    /// Parses `0.9`, `8GiB`, `cpu=4GiB`, `cuda:0=0.8`; later entries win.
    pub fn parse(items: &[String]) -> Result<Self, String> {
        let mut spec = BudgetSpec::default();
        for item in items.iter().flat_map(|i| i.split(',')).map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('=') {
                Some((dev, lim)) => {
                    let dev = crate::device::canonical_name(dev);
                    spec.per_device.retain(|(d, _)| *d != dev);
                    spec.per_device.push((dev, lim.parse()?));
                }
                None => spec.default = item.parse()?,
            }
        }
        Ok(spec)
    }

    pub fn limit_for(&self, device: &str) -> Limit {
        self.per_device.iter().find(|(d, _)| d == device).map(|(_, l)| *l).unwrap_or(self.default)
    }
}

/// What a load needs on its device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Need {
    pub weights: u64,
    pub kv: u64,
    pub workspace: u64,
}

impl Need {
    pub fn total(&self) -> u64 {
        self.weights + self.kv + self.workspace
    }
}

/// A device as an admission decision sees it.
#[derive(Debug, Clone, Default)]
pub struct DeviceState {
    pub device: String,
    /// The budget in bytes (the limit resolved against the device's total).
    pub budget: u64,
    /// Bytes teal's other slots hold on the device (the slot being replaced not counted).
    pub held: u64,
    /// Free on the device now, as the OS or driver reports it.
    pub available: u64,
    /// Bytes the load frees before it allocates (the standby it replaces).
    pub reclaimable: u64,
    /// Bytes the live slot holds on this device, if it is here.
    pub live: Option<u64>,
}

/// Bytes a new load may take: what the budget leaves after the other slots, and no more than the device has.
pub fn free_within_budget(s: &DeviceState) -> u64 {
    s.budget.saturating_sub(s.held).min(s.available.saturating_add(s.reclaimable))
}

/// Human-readable bytes (binary units).
pub fn human(b: u64) -> String {
    ByteSize(b).display().iec().to_string()
}

/// Ok if `need` fits; else the precise refusal.
pub fn admit(need: &Need, s: &DeviceState) -> Result<(), String> {
    let free = free_within_budget(s);
    if need.total() <= free {
        return Ok(());
    }
    let live = match s.live {
        Some(b) => format!("; the live slot holds {}", human(b)),
        None => String::new(),
    };
    Err(format!(
        "need {} on {} (weights {}, kv {}, workspace {}); free within budget {} (budget {}, other slots hold {}, \
         device free {}){live}",
        human(need.total()),
        s.device,
        human(need.weights),
        human(need.kv),
        human(need.workspace),
        human(free),
        human(s.budget),
        human(s.held),
        human(s.available.saturating_add(s.reclaimable)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn limits_parse_as_fractions_percentages_or_sizes() {
        assert_eq!("0.9".parse::<Limit>().unwrap(), Limit::Fraction(0.9));
        assert_eq!("80%".parse::<Limit>().unwrap(), Limit::Fraction(0.8));
        assert_eq!("8GiB".parse::<Limit>().unwrap(), Limit::Bytes(8 * GIB));
        assert_eq!("512 MiB".parse::<Limit>().unwrap(), Limit::Bytes(512 << 20));
        assert_eq!("1".parse::<Limit>().unwrap(), Limit::Fraction(1.0));
        assert!("0".parse::<Limit>().is_err());
        assert!("150%".parse::<Limit>().is_err());
        assert!("lots".parse::<Limit>().is_err());
        assert_eq!(Limit::Fraction(0.5).resolve(10 * GIB), 5 * GIB);
        assert_eq!(Limit::Bytes(20 * GIB).resolve(10 * GIB), 10 * GIB, "never above the device");
    }

    #[test]
    fn per_device_budgets_override_the_default() {
        let spec = BudgetSpec::parse(&["0.8".into(), "cpu=4GiB, cuda=0.5".into()]).unwrap();
        assert_eq!(spec.limit_for("cpu"), Limit::Bytes(4 * GIB));
        assert_eq!(spec.limit_for("cuda:0"), Limit::Fraction(0.5));
        assert_eq!(spec.limit_for("cuda:1"), Limit::Fraction(0.8));
        assert_eq!(BudgetSpec::parse(&[]).unwrap(), BudgetSpec::default());
        assert!(BudgetSpec::parse(&["cpu=much".into()]).is_err());
    }

    #[test]
    fn free_is_the_budget_left_but_never_more_than_the_device_has() {
        let s = DeviceState { budget: 10 * GIB, held: 4 * GIB, available: 8 * GIB, ..Default::default() };
        assert_eq!(free_within_budget(&s), 6 * GIB);
        let tight = DeviceState { available: 2 * GIB, reclaimable: GIB, ..s.clone() };
        assert_eq!(free_within_budget(&tight), 3 * GIB, "another process took the device's memory");
        let over = DeviceState { held: 12 * GIB, ..s };
        assert_eq!(free_within_budget(&over), 0);
    }

    #[test]
    fn a_load_that_does_not_fit_is_refused_with_the_numbers() {
        let s = DeviceState {
            device: "cuda:0".into(),
            budget: 4 * GIB,
            held: 3 * GIB + GIB / 10,
            available: 10 * GIB,
            reclaimable: 0,
            live: Some(3 * GIB + GIB / 10),
        };
        let need = Need { weights: 9 * GIB / 10, kv: GIB / 4, workspace: GIB / 20 };
        let err = admit(&need, &s).unwrap_err();
        assert!(
            err.starts_with("need 1.2 GiB on cuda:0 (weights 921.6 MiB, kv 256.0 MiB, workspace 51.2 MiB)"),
            "{err}"
        );
        assert!(err.contains("free within budget 921.6 MiB"), "{err}");
        assert!(err.ends_with("the live slot holds 3.1 GiB"), "{err}");
        assert!(admit(&Need { weights: GIB / 2, ..need }, &s).is_ok());
        assert!(admit(&Need::default(), &DeviceState::default()).is_ok(), "nothing needed always fits");
    }
}
