//! TPC-H query 1 over `lineitem` batches, exactly: the pricing summary report, grouped
//! by return flag and line status over the rows shipped by 1998-09-02 (90 days before
//! 1998-12-01). Prices, discounts and taxes are decimals with two places, so every sum
//! is kept as an exact integer (scale 2 for quantities and prices, 4 for discounted
//! prices, 6 for charges) and averages are derived from sums and counts at the end.
//!
//! Invariants: partial results over any partition of the rows merge into the result over
//! all of them (sums and counts add); two results are equal only if every group's every
//! sum and count is equal.

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Decimal128Type};
use arrow_array::{Array, RecordBatch};
use serde::Serialize;

/// 1998-09-02 as days since 1970-01-01: the last ship date Q1 counts.
pub const LAST_SHIP_DATE: i32 = 10_471;

/// The columns Q1 reads, in the order [`Q1::add`] expects them.
pub const COLUMNS: [&str; 7] = [
    "l_quantity",
    "l_extendedprice",
    "l_discount",
    "l_tax",
    "l_returnflag",
    "l_linestatus",
    "l_shipdate",
];

/// One group's sums and count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Group {
    /// Σ l_quantity (scale 2).
    pub sum_qty: i128,
    /// Σ l_extendedprice (scale 2).
    pub sum_base_price: i128,
    /// Σ l_extendedprice · (1 − l_discount) (scale 4).
    pub sum_disc_price: i128,
    /// Σ l_extendedprice · (1 − l_discount) · (1 + l_tax) (scale 6).
    pub sum_charge: i128,
    /// Σ l_discount (scale 2), for its average.
    pub sum_discount: i128,
    /// Rows.
    pub count: u64,
}

impl Group {
    fn merge(&mut self, other: &Group) {
        self.sum_qty += other.sum_qty;
        self.sum_base_price += other.sum_base_price;
        self.sum_disc_price += other.sum_disc_price;
        self.sum_charge += other.sum_charge;
        self.sum_discount += other.sum_discount;
        self.count += other.count;
    }
}

/// Q1's result so far: per (return flag, line status), its group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Q1 {
    groups: BTreeMap<(String, String), Group>,
}

impl Q1 {
    /// Adds the rows of `batch` (which has at least [`COLUMNS`], by name).
    pub fn add(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("no column {name}"))
        };
        let decimal = |name: &str| {
            column(name)?
                .as_primitive_opt::<Decimal128Type>()
                .ok_or_else(|| format!("{name} is not a decimal"))
        };
        let (qty, price) = (decimal(COLUMNS[0])?, decimal(COLUMNS[1])?);
        let (discount, tax) = (decimal(COLUMNS[2])?, decimal(COLUMNS[3])?);
        let text = |name: &str| {
            column(name)?
                .as_string_view_opt()
                .ok_or_else(|| format!("{name} is not a string view"))
        };
        let (flag, status) = (text(COLUMNS[4])?, text(COLUMNS[5])?);
        let shipdate = column(COLUMNS[6])?
            .as_primitive_opt::<Date32Type>()
            .ok_or("l_shipdate is not a date")?;
        for row in 0..batch.num_rows() {
            if shipdate.is_null(row) || shipdate.value(row) > LAST_SHIP_DATE {
                continue;
            }
            let key = (flag.value(row).to_string(), status.value(row).to_string());
            let group = match self.groups.get_mut(&key) {
                Some(group) => group,
                None => self.groups.entry(key).or_default(),
            };
            let (p, d, t) = (price.value(row), discount.value(row), tax.value(row));
            group.sum_qty += qty.value(row);
            group.sum_base_price += p;
            group.sum_disc_price += p * (100 - d);
            group.sum_charge += p * (100 - d) * (100 + t);
            group.sum_discount += d;
            group.count += 1;
        }
        Ok(())
    }

    /// Adds another partial result.
    pub fn merge(&mut self, other: &Q1) {
        for (key, group) in &other.groups {
            self.groups.entry(key.clone()).or_default().merge(group);
        }
    }

    /// Rows counted.
    pub fn rows(&self) -> u64 {
        self.groups.values().map(|g| g.count).sum()
    }

    /// The result as the report prints it.
    pub fn rows_out(&self) -> Vec<Q1Row> {
        self.groups
            .iter()
            .map(|((flag, status), g)| {
                let count = g.count.max(1) as f64;
                Q1Row {
                    l_returnflag: flag.clone(),
                    l_linestatus: status.clone(),
                    sum_qty: decimal(g.sum_qty, 2),
                    sum_base_price: decimal(g.sum_base_price, 2),
                    sum_disc_price: decimal(g.sum_disc_price, 4),
                    sum_charge: decimal(g.sum_charge, 6),
                    avg_qty: g.sum_qty as f64 / 100.0 / count,
                    avg_price: g.sum_base_price as f64 / 100.0 / count,
                    avg_disc: g.sum_discount as f64 / 100.0 / count,
                    count_order: g.count,
                }
            })
            .collect()
    }
}

/// One row of Q1's result.
#[derive(Clone, Debug, Serialize)]
pub struct Q1Row {
    /// Return flag.
    pub l_returnflag: String,
    /// Line status.
    pub l_linestatus: String,
    /// Exact, as a decimal string.
    pub sum_qty: String,
    /// Exact, as a decimal string.
    pub sum_base_price: String,
    /// Exact, as a decimal string.
    pub sum_disc_price: String,
    /// Exact, as a decimal string.
    pub sum_charge: String,
    /// Average quantity.
    pub avg_qty: f64,
    /// Average price.
    pub avg_price: f64,
    /// Average discount.
    pub avg_disc: f64,
    /// Rows.
    pub count_order: u64,
}

/// `value` with `scale` decimal places, as text.
fn decimal(value: i128, scale: u32) -> String {
    let unit = 10i128.pow(scale);
    let sign = if value < 0 { "-" } else { "" };
    let (whole, frac) = (value.abs() / unit, value.abs() % unit);
    format!("{sign}{whole}.{frac:0width$}", width = scale as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_ship_date_is_1998_09_02() {
        // 28 years from 1970 with 7 leap days, then January to August 1998, then 1 day.
        let days = 28 * 365 + 7 + (31 + 28 + 31 + 30 + 31 + 30 + 31 + 31) + 1;
        assert_eq!(LAST_SHIP_DATE, days);
    }

    #[test]
    fn decimals_print_exactly() {
        assert_eq!(decimal(123_456, 2), "1234.56");
        assert_eq!(decimal(-5, 4), "-0.0005");
        assert_eq!(decimal(0, 6), "0.000000");
    }

    #[test]
    fn partials_merge_into_the_whole() {
        let g = Group {
            sum_qty: 1,
            sum_base_price: 2,
            sum_disc_price: 3,
            sum_charge: 4,
            sum_discount: 5,
            count: 6,
        };
        let key = ("A".to_string(), "F".to_string());
        let mut a = Q1::default();
        a.groups.insert(key.clone(), g);
        let mut b = a.clone();
        b.merge(&a);
        assert_eq!(b.groups[&key].count, 12);
        assert_eq!(b.groups[&key].sum_charge, 8);
        assert_ne!(a, b);
        assert_eq!(b.rows(), 12);
    }
}
