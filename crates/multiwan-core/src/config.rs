//! The config file as written: TOML deserialised into raw structs that keep every value's
//! byte span, so validation can point at `file:line:col`. Unknown keys are rejected here.
//!
//! Nothing is interpreted in this module; [`crate::model`] turns these structs into the
//! validated domain model.

use serde::Deserialize;
use toml::Spanned;

/// A list of strings, with spans for the list and each element.
pub type SpannedList = Spanned<Vec<Spanned<String>>>;

/// A value that users may write as a number or as a string (`80` or `"8000-8080"`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum NumOrStr {
    Num(i64),
    Str(String),
}

impl NumOrStr {
    /// The value as the text a user would write.
    pub fn to_text(&self) -> String {
        match self {
            NumOrStr::Num(n) => n.to_string(),
            NumOrStr::Str(s) => s.clone(),
        }
    }
}

/// A number written as an integer or a float (`20` or `2.5`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RawNumber {
    Int(i64),
    Float(f64),
}

impl RawNumber {
    /// The value as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            RawNumber::Int(i) => i as f64,
            RawNumber::Float(f) => f,
        }
    }
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub daemon: Option<Spanned<RawDaemon>>,
    pub lan: Option<Spanned<RawLan>>,
    #[serde(default)]
    pub uplink: Vec<Spanned<RawUplink>>,
    pub balance: Option<Spanned<RawBalance>>,
    #[serde(default)]
    pub rule: Vec<Spanned<RawRule>>,
    pub kernel: Option<Spanned<RawKernel>>,
}

/// `[daemon]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub hook: Option<Spanned<String>>,
    pub metrics: Option<Spanned<NumOrStr>>,
    pub control_group: Option<Spanned<String>>,
}

/// `[lan]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLan {
    pub interfaces: Option<SpannedList>,
}

/// `[[uplink]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUplink {
    pub name: Option<Spanned<String>>,
    pub interface: Option<Spanned<String>>,
    pub gateway: Option<Spanned<String>>,
    pub weight: Option<Spanned<i64>>,
    pub tier: Option<Spanned<i64>>,
    pub snat: Option<Spanned<String>>,
    pub check: Option<Spanned<RawCheck>>,
}

/// `[uplink.check]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub targets: Option<SpannedList>,
    pub method: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub down_after: Option<Spanned<i64>>,
    pub up_after: Option<Spanned<i64>>,
    pub min_targets: Option<Spanned<i64>>,
    pub max_loss: Option<Spanned<RawNumber>>,
    pub max_rtt: Option<Spanned<String>>,
    pub recover_loss: Option<Spanned<RawNumber>>,
    pub recover_rtt: Option<Spanned<String>>,
    pub window: Option<Spanned<String>>,
}

/// `[balance]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBalance {
    pub method: Option<Spanned<String>>,
    pub local: Option<Spanned<bool>>,
    pub when_all_down: Option<Spanned<String>>,
    pub on_uplink_down: Option<Spanned<String>>,
}

/// `[[rule]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<Spanned<String>>,
    pub src: Option<SpannedList>,
    pub dst: Option<SpannedList>,
    pub proto: Option<Spanned<String>>,
    pub sport: Option<Spanned<Vec<Spanned<NumOrStr>>>>,
    pub dport: Option<Spanned<Vec<Spanned<NumOrStr>>>>,
    pub uplinks: Option<SpannedList>,
    pub mode: Option<Spanned<String>>,
}

/// `[kernel]`: the resources multiwan owns, so it can coexist with other fwmark users.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKernel {
    pub mark_mask: Option<Spanned<NumOrStr>>,
    pub table_base: Option<Spanned<i64>>,
    pub rule_priority: Option<Spanned<i64>>,
}

/// Parses TOML text into the raw structs. Errors carry a byte span when toml knows one.
pub fn parse(text: &str) -> Result<RawConfig, toml::de::Error> {
    toml::from_str(text)
}
