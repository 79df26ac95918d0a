//! Which numbers are worth a CRM search, and when two written forms are the same number.
//!
//! CRM records hold phone numbers the way people typed them (`+49 30 1234567`, `030 1234567`,
//! `(030) 123-4567`); the PBX gives them as dialled. Both are reduced to digits and compared on
//! their trailing [`MATCH_DIGITS`] digits, which ignores country codes and trunk prefixes without
//! confusing two subscribers of one area.

/// Digits two numbers must share at their end to be the same number.
pub const MATCH_DIGITS: usize = 9;

/// What a party's number is, for the CRM.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// An outside number: search it by these digits.
    Searchable(String),
    /// One of the contact center's own extensions: never searched.
    Internal,
    /// The caller withheld the number (or the network did not send one): never searched.
    Withheld,
}

/// Classifies a number as the PBX gave it. Numbers of at most `internal_max_digits` digits are
/// extensions.
pub fn classify(raw: &str, internal_max_digits: usize) -> Caller {
    let trimmed = raw.trim();
    let lowered = trimmed.to_ascii_lowercase();
    if trimmed.is_empty() || WITHHELD.contains(&lowered.as_str()) {
        return Caller::Withheld;
    }
    let digits = digits(trimmed);
    if digits.is_empty() {
        return Caller::Withheld;
    }
    if digits.len() <= internal_max_digits {
        return Caller::Internal;
    }
    Caller::Searchable(digits)
}

/// How PBXs and carriers spell a missing caller id.
const WITHHELD: &[&str] = &["anonymous", "private", "restricted", "unknown", "withheld", "unavailable"];

/// The digits of a number, in order.
pub fn digits(raw: &str) -> String {
    raw.chars().filter(char::is_ascii_digit).collect()
}

/// The part of a number's digits that identifies it.
pub fn match_key(digits: &str) -> &str {
    &digits[digits.len().saturating_sub(MATCH_DIGITS)..]
}

/// Whether a stored phone (any format) is the number searched for (digits).
pub fn same_number(stored: &str, searched_digits: &str) -> bool {
    let stored = digits(stored);
    if stored.len() < MATCH_DIGITS || searched_digits.len() < MATCH_DIGITS {
        return stored == searched_digits;
    }
    match_key(&stored) == match_key(searched_digits)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn outside_numbers_are_searched_by_their_digits() {
        assert_eq!(classify("+49 30 1234567", 6), Caller::Searchable("49301234567".into()));
        assert_eq!(classify("(030) 123-4567", 6), Caller::Searchable("0301234567".into()));
    }

    #[test]
    fn extensions_and_withheld_numbers_are_never_searched() {
        assert_eq!(classify("2001", 6), Caller::Internal);
        assert_eq!(classify("123456", 6), Caller::Internal);
        assert_eq!(classify("1234567", 6), Caller::Searchable("1234567".into()));
        for withheld in ["", "  ", "anonymous", "Anonymous", "PRIVATE", "restricted", "unknown", "---"] {
            assert_eq!(classify(withheld, 6), Caller::Withheld, "{withheld:?}");
        }
    }

    #[test]
    fn national_and_international_forms_match() {
        assert!(same_number("030 1234567", "49301234567"));
        assert!(same_number("+49 (30) 123-4567", "0301234567"));
        assert!(!same_number("030 1234568", "49301234567"));
        assert!(!same_number("089 1234567", "49301234567"), "another area, same subscriber digits");
        assert!(same_number("12345", "12345"));
        assert!(!same_number("112345", "12345"), "short numbers match only exactly");
    }

    proptest! {
        /// However a number is written (separators, country code or trunk prefix), it is the same.
        #[test]
        fn formatting_never_changes_a_match(subscriber in 0u32..10_000_000, style in 0usize..5) {
            let searched = format!("4930{subscriber:07}");
            let local = format!("{subscriber:07}");
            let written = match style {
                0 => format!("+49 30 {local}"),
                1 => format!("030 {local}"),
                2 => format!("(030) {}-{}", &local[..3], &local[3..]),
                3 => format!("+4930{local}"),
                _ => format!("0049-30-{local}"),
            };
            prop_assert!(same_number(&written, &searched));
            let other = format!("4930{:07}", (subscriber + 1) % 10_000_000);
            prop_assert!(!same_number(&written, &other));
        }
    }
}
