//! What a model's tokens cost: a table of prices per million tokens by model name, the shipped
//! defaults for common models, and the cost of one exchange's usage.
//!
//! A model matches the longest table name it starts with, followed by the end or `-`, `:`, `@`
//! or `/` (`gpt-4o-2024-08-06` is `gpt-4o`, `gpt-4o-mini` is `gpt-4o-mini` and never `gpt-4o`,
//! `gpt-4.1` is never `gpt-4`). The matched name is also the `model` label of the usage metrics,
//! so their cardinality is bounded by the table; a model the table lacks is `unpriced` and costs
//! nothing (its tokens are still counted and limited).

use super::{Micros, Usage};
use std::collections::BTreeMap;

/// USD (or the table's currency) per million tokens, in micros: `2.50` is `2_500_000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: Micros,
    pub output: Micros,
    /// Prompt tokens read from a cache (defaults to `input`).
    pub cached_input: Micros,
    /// Prompt tokens written to a cache (Anthropic; defaults to `input`).
    pub cache_write: Micros,
}

/// The label of tokens whose model no price matches.
pub const UNPRICED: &str = "unpriced";

/// Shipped prices (USD per million tokens: input, output, cached input, cache write), from the
/// providers' public price lists; a config's `usage.prices` entries replace or add to them.
const DEFAULTS: &[(&str, f64, f64, f64, f64)] = &[
    ("gpt-4o", 2.50, 10.00, 1.25, 2.50),
    ("gpt-4o-mini", 0.15, 0.60, 0.075, 0.15),
    ("gpt-4.1", 2.00, 8.00, 0.50, 2.00),
    ("gpt-4.1-mini", 0.40, 1.60, 0.10, 0.40),
    ("gpt-4.1-nano", 0.10, 0.40, 0.025, 0.10),
    ("gpt-5", 1.25, 10.00, 0.125, 1.25),
    ("gpt-5-mini", 0.25, 2.00, 0.025, 0.25),
    ("gpt-5-nano", 0.05, 0.40, 0.005, 0.05),
    ("o1", 15.00, 60.00, 7.50, 15.00),
    ("o3", 2.00, 8.00, 0.50, 2.00),
    ("o3-mini", 1.10, 4.40, 0.55, 1.10),
    ("o4-mini", 1.10, 4.40, 0.275, 1.10),
    ("claude-opus-4", 15.00, 75.00, 1.50, 18.75),
    ("claude-sonnet-4", 3.00, 15.00, 0.30, 3.75),
    ("claude-3-7-sonnet", 3.00, 15.00, 0.30, 3.75),
    ("claude-3-5-sonnet", 3.00, 15.00, 0.30, 3.75),
    ("claude-haiku-4-5", 1.00, 5.00, 0.10, 1.25),
    ("claude-3-5-haiku", 0.80, 4.00, 0.08, 1.00),
];

/// Converts an amount per million tokens to micros, refusing what cannot be a price.
pub fn to_micros(amount: f64) -> Result<Micros, String> {
    if !amount.is_finite() || !(0.0..=1e9).contains(&amount) {
        return Err(format!(
            "`{amount}` is not a price (a non-negative amount per million tokens)"
        ));
    }
    Ok((amount * 1_000_000.0).round() as Micros)
}

/// Prices by model name (see the module's matching rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceTable {
    prices: BTreeMap<String, Price>,
}

impl Default for PriceTable {
    /// The shipped defaults.
    fn default() -> Self {
        let m = |a: f64| (a * 1_000_000.0).round() as Micros;
        PriceTable {
            prices: DEFAULTS
                .iter()
                .map(|&(name, i, o, c, w)| {
                    let p = Price {
                        input: m(i),
                        output: m(o),
                        cached_input: m(c),
                        cache_write: m(w),
                    };
                    (name.to_string(), p)
                })
                .collect(),
        }
    }
}

impl PriceTable {
    /// The defaults with `overrides` replacing or adding entries.
    pub fn with(overrides: impl IntoIterator<Item = (String, Price)>) -> PriceTable {
        let mut t = PriceTable::default();
        t.prices.extend(overrides);
        t
    }

    /// The table name `model` is priced under, and its price.
    pub fn lookup(&self, model: &str) -> Option<(&str, &Price)> {
        // A few dozen names: a scan costs less than the exchange's JSON parse.
        self.prices
            .iter()
            .filter(|(name, _)| {
                model
                    .strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', ':', '@', '/']))
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(n, p)| (n.as_str(), p))
    }

    /// The metric label for `model`: its table name, or `unpriced`.
    pub fn label<'a>(&'a self, model: Option<&str>) -> &'a str {
        model
            .and_then(|m| self.lookup(m))
            .map_or(UNPRICED, |(n, _)| n)
    }

    /// What `usage` of `model` costs, in micros (0 for a model the table lacks).
    pub fn cost(&self, model: Option<&str>, usage: &Usage) -> Micros {
        let Some((_, p)) = model.and_then(|m| self.lookup(m)) else {
            return 0;
        };
        let cached = usage.cached_input.min(usage.input);
        let write = usage.cache_write.min(usage.input - cached);
        let plain = usage.input - cached - write;
        let sum: u128 = u128::from(plain) * u128::from(p.input)
            + u128::from(cached) * u128::from(p.cached_input)
            + u128::from(write) * u128::from(p.cache_write)
            + u128::from(usage.output) * u128::from(p.output);
        // Prices are per million tokens; round to the nearest micro.
        ((sum + 500_000) / 1_000_000).min(u128::from(u64::MAX)) as Micros
    }

    /// How many output tokens of `model` fit in `budget` after `input` prompt tokens (`None`:
    /// the table prices its output at nothing, or does not know it).
    pub fn output_within(&self, model: Option<&str>, input: u64, budget: Micros) -> Option<u64> {
        let (_, p) = model.and_then(|m| self.lookup(m))?;
        if p.output == 0 {
            return None;
        }
        let left = budget.saturating_sub(self.ceiling(model, input, 0));
        Some((u128::from(left) * 1_000_000 / u128::from(p.output)).min(u128::from(u64::MAX)) as u64)
    }

    /// The most `tokens` prompt and `output` generated tokens of `model` can cost (cache
    /// discounts not assumed): a request's reservation against a cost budget.
    pub fn ceiling(&self, model: Option<&str>, input: u64, output: u64) -> Micros {
        self.cost(
            model,
            &Usage {
                input,
                output,
                ..Usage::default()
            },
        )
    }
}
