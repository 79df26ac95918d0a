//! The sandbox's phone matching rule and number plan.
//!
//! Records store phones the way people type them (`+49 30 1234567`, `030 1234567`,
//! `(030) 123-4567`, `+49301234567`). A search term matches a stored phone when both, reduced to
//! their digits, agree on their last nine digits; when either has fewer than nine digits they must
//! be equal. That makes the national and international forms of one number match (`030 1234567` and
//! `+49 30 1234567` both end in `301234567`) while a short internal extension matches only itself.
//! Real SOSL tokenises phone fields in its own, undocumented way; this rule is the sandbox's model
//! of it, stated so a client can be tested against it.

use serde::{Deserialize, Serialize};

/// How many trailing digits decide a match.
pub const MATCH_DIGITS: usize = 9;

/// `text` without everything but its ASCII digits.
pub fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

/// The key two phones must share to match: their last [`MATCH_DIGITS`] digits, or all their digits
/// when they have fewer. `None` when `text` has no digits (it matches nothing).
pub fn match_key(text: &str) -> Option<String> {
    let digits = digits(text);
    if digits.is_empty() {
        return None;
    }
    // A key of nine digits never equals a shorter one, so "equal when either is short" falls out.
    Some(digits[digits.len().saturating_sub(MATCH_DIGITS)..].to_owned())
}

/// Whether search term `term` matches stored phone `stored` (see the module's rule).
pub fn phone_matches(term: &str, stored: &str) -> bool {
    match (match_key(term), match_key(stored)) {
        (Some(term), Some(stored)) => term == stored,
        _ => false,
    }
}

/// The ways seeded records write a number down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PhoneStyle {
    /// `+49 30 1234567`
    InternationalSpaced,
    /// `030 1234567`
    National,
    /// `(030) 123-4567`
    NationalParenthesised,
    /// `+49301234567`
    E164,
}

impl PhoneStyle {
    /// Every style, in a fixed order.
    pub const ALL: [PhoneStyle; 4] =
        [PhoneStyle::InternationalSpaced, PhoneStyle::National, PhoneStyle::NationalParenthesised, PhoneStyle::E164];
}

/// Where seeded numbers come from: `+<country><area>` followed by a subscriber number of fixed
/// length, drawn by index from `first_index..end_index`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberPlan {
    /// The country code, without `+` (`49`).
    pub country_code: String,
    /// The area code without the national trunk prefix `0` (`30`).
    pub area_code: String,
    /// Digits of the subscriber number; the index is zero-padded to this many.
    pub subscriber_digits: u32,
    /// The first index numbers are drawn from.
    pub first_index: u64,
    /// One past the last index numbers are drawn from.
    pub end_index: u64,
}

impl Default for NumberPlan {
    fn default() -> Self {
        Self {
            country_code: "49".into(),
            area_code: "30".into(),
            subscriber_digits: 7,
            first_index: 0,
            end_index: 100_000,
        }
    }
}

impl NumberPlan {
    /// The subscriber number of `index`, zero-padded.
    fn subscriber(&self, index: u64) -> String {
        format!("{index:0width$}", width = self.subscriber_digits as usize)
    }

    /// The E.164 form of the number with `index` (`+4930` and the subscriber number).
    pub fn e164(&self, index: u64) -> String {
        format!("+{}{}{}", self.country_code, self.area_code, self.subscriber(index))
    }

    /// The number with `index`, written in `style`.
    pub fn format(&self, index: u64, style: PhoneStyle) -> String {
        let subscriber = self.subscriber(index);
        let (country, area) = (&self.country_code, &self.area_code);
        match style {
            PhoneStyle::InternationalSpaced => format!("+{country} {area} {subscriber}"),
            PhoneStyle::National => format!("0{area} {subscriber}"),
            PhoneStyle::NationalParenthesised => {
                let split = subscriber.len().min(3);
                format!("(0{area}) {}-{}", &subscriber[..split], &subscriber[split..])
            }
            PhoneStyle::E164 => format!("+{country}{area}{subscriber}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_documented_formats_of_one_number_match_each_other() {
        let forms = ["+49 30 1234567", "030 1234567", "(030) 123-4567", "+49301234567", "4930123456", "0049301234567"];
        for a in forms.iter().take(4) {
            for b in forms.iter().take(4) {
                assert!(phone_matches(a, b), "{a} vs {b}");
            }
        }
        assert!(phone_matches("0049301234567", "030 1234567"));
        assert!(!phone_matches("4930123456", "+49 30 1234567"), "a different last digit");
        assert!(!phone_matches("+49 30 1234568", "+49 30 1234567"));
    }

    #[test]
    fn short_numbers_match_only_themselves() {
        assert!(phone_matches("2001", "2001"));
        assert!(phone_matches("20-01", "2001"));
        assert!(!phone_matches("2001", "+49 30 1232001"));
        assert!(!phone_matches("+49 30 1232001", "2001"));
        assert!(!phone_matches("12345678", "912345678"), "eight digits against nine");
        assert!(!phone_matches("", ""), "no digits match nothing");
        assert!(!phone_matches("abc", "abc"));
    }

    #[test]
    fn the_plan_formats_the_documented_styles() {
        let plan = NumberPlan::default();
        assert_eq!(plan.format(1_234_567, PhoneStyle::InternationalSpaced), "+49 30 1234567");
        assert_eq!(plan.format(1_234_567, PhoneStyle::National), "030 1234567");
        assert_eq!(plan.format(1_234_567, PhoneStyle::NationalParenthesised), "(030) 123-4567");
        assert_eq!(plan.format(1_234_567, PhoneStyle::E164), "+49301234567");
        assert_eq!(plan.e164(42), "+49300000042");
    }

    fn style() -> impl Strategy<Value = PhoneStyle> {
        prop::sample::select(PhoneStyle::ALL.to_vec())
    }

    proptest! {
        /// Formatting never changes whether two numbers match: every form of a number matches every
        /// form of itself and no form of another number.
        #[test]
        fn formatting_never_changes_a_match(
            a in 0u64..10_000_000, b in 0u64..10_000_000, style_a in style(), style_b in style(),
        ) {
            let plan = NumberPlan::default();
            prop_assert!(phone_matches(&plan.format(a, style_a), &plan.format(a, style_b)));
            prop_assert!(phone_matches(&plan.e164(a), &plan.format(a, style_b)));
            prop_assert_eq!(phone_matches(&plan.format(a, style_a), &plan.format(b, style_b)), a == b);
        }

        /// The rule is symmetric and agrees with comparing match keys.
        #[test]
        fn matching_is_symmetric(a in "[0-9 +()-]{0,16}", b in "[0-9 +()-]{0,16}") {
            prop_assert_eq!(phone_matches(&a, &b), phone_matches(&b, &a));
        }
    }
}
