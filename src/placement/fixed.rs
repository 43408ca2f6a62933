//! Fixed-point logarithms for the placement draws.
//!
//! Raft replicas recompute the placement map when they apply a command, so every machine must
//! compute the same bits; `f64::ln` comes from the platform's libm and may differ in the last
//! place between machines. These functions use integers only: `log2` comes from a table built at
//! compile time (by repeated squaring, exact integer arithmetic) plus linear interpolation, in
//! fixed point with `LOG_FRACTION_BITS` fractional bits. The interpolation error (< 2^-22) is far
//! below anything that could bias a draw; what matters is that it is the same everywhere.

/// Fractional bits of the fixed-point logarithms.
pub(super) const LOG_FRACTION_BITS: u32 = 32;
/// The table holds `log2(1 + i / 2^LOG_TABLE_BITS)`; the rest of the mantissa interpolates.
const LOG_TABLE_BITS: u32 = 10;
const LOG_TABLE_LENGTH: usize = (1 << LOG_TABLE_BITS) + 1;
const LOG_TABLE: [u64; LOG_TABLE_LENGTH] = build_log_table();
/// `log2(2^64)` in fixed point: the largest value `neglog` returns.
pub(super) const NEGLOG_MAX: u64 = 64 << LOG_FRACTION_BITS;

const _: () = assert!(
    LOG_FRACTION_BITS + 7 < 63,
    "a logit must fit an i64 with room to add"
);
const _: () = assert!(LOG_TABLE[1] > 0 && LOG_TABLE[LOG_TABLE_LENGTH - 2] < 1 << LOG_FRACTION_BITS);

/// `-log2(hash / 2^64)`: an exponential variate (straw2's "straw length"), in fixed point. A
/// hash of 0 counts as 1 so the result stays finite.
pub(super) fn neglog(hash: u64) -> u64 {
    let value = NEGLOG_MAX - log2_fixed(hash.max(1));
    debug_assert!(value <= NEGLOG_MAX);
    value
}

/// `log2(u / (1 - u))` for `u = hash / 2^64`, in fixed point: the log-odds of a uniform draw,
/// which Pareto order sampling ranks by. A hash of 0 counts as 1.
pub(super) fn logit_of_hash(hash: u64) -> i64 {
    let hash = hash.max(1);
    // 2^64 - hash, which is at least 1 because hash >= 1.
    let complement = hash.wrapping_neg();
    let value = log2_fixed(hash) as i64 - log2_fixed(complement) as i64;
    debug_assert!(value.unsigned_abs() <= NEGLOG_MAX);
    value
}

/// `log2(numerator / denominator)` in fixed point, both at least 1.
pub(super) fn log2_ratio(numerator: u64, denominator: u64) -> i64 {
    assert!(numerator >= 1 && denominator >= 1, "log of 0");
    let value = log2_fixed(numerator) as i64 - log2_fixed(denominator) as i64;
    debug_assert!(value.unsigned_abs() <= NEGLOG_MAX);
    value
}

/// `log2(x)` for `x >= 1`, in fixed point.
pub(super) fn log2_fixed(x: u64) -> u64 {
    debug_assert!(x != 0);
    let leading = x.leading_zeros();
    let exponent = u64::from(63 - leading);
    let fraction = (x << leading) & !(1u64 << 63);
    let rest_bits = 63 - LOG_TABLE_BITS;
    let index = (fraction >> rest_bits) as usize;
    let rest = fraction & ((1u64 << rest_bits) - 1);
    let low = LOG_TABLE[index];
    let high = LOG_TABLE[index + 1];
    let step = ((u128::from(high - low) * u128::from(rest)) >> rest_bits) as u64;
    let result = (exponent << LOG_FRACTION_BITS) + low + step;
    debug_assert!(result < NEGLOG_MAX);
    result
}

/// `log2(m / 2^63)` for a mantissa `m` in `[2^63, 2^64)`, by repeated squaring: each square
/// that reaches 2 yields a 1 bit.
const fn log2_mantissa(mantissa: u64) -> u64 {
    let mut m = mantissa as u128;
    let mut result = 0u64;
    let mut bit = 0;
    while bit < LOG_FRACTION_BITS {
        m = (m * m) >> 63;
        result <<= 1;
        if m >= (1u128 << 64) {
            result |= 1;
            m >>= 1;
        }
        bit += 1;
    }
    result
}

const fn build_log_table() -> [u64; LOG_TABLE_LENGTH] {
    let mut table = [0u64; LOG_TABLE_LENGTH];
    let mut index = 0;
    while index < LOG_TABLE_LENGTH - 1 {
        let mantissa = (1u64 << 63) | ((index as u64) << (63 - LOG_TABLE_BITS));
        table[index] = log2_mantissa(mantissa);
        index += 1;
    }
    table[LOG_TABLE_LENGTH - 1] = 1 << LOG_FRACTION_BITS;
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the integer log2 agrees with the float one to ~2^-20 (floats are fine in a test:
    /// only the production path must be bit-identical across machines).
    #[test]
    fn log2_matches_float() {
        let scale = (1u64 << LOG_FRACTION_BITS) as f64;
        let mut x = 1u64;
        for step in 0..4000u64 {
            let fixed = log2_fixed(x) as f64 / scale;
            assert!(
                (fixed - (x as f64).log2()).abs() < 1e-6,
                "x={x} fixed={fixed}"
            );
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407 + step)
                | 1;
        }
        assert_eq!(log2_fixed(1), 0);
        assert_eq!(log2_fixed(1 << 40), 40 << LOG_FRACTION_BITS);
    }

    /// Goal: the draw transforms are monotone and in range at the extremes.
    #[test]
    fn draws_at_extremes() {
        assert_eq!(neglog(0), NEGLOG_MAX);
        assert!(neglog(u64::MAX) < 1 << 8);
        assert!(neglog(1 << 63) == 1 << LOG_FRACTION_BITS);
        assert_eq!(logit_of_hash(1 << 63), 0);
        assert!(logit_of_hash(1) < -(63 << LOG_FRACTION_BITS));
        assert!(logit_of_hash(u64::MAX) > 63 << LOG_FRACTION_BITS);
        assert_eq!(log2_ratio(8, 2), 2 << LOG_FRACTION_BITS);
    }
}
