//! Salesforce-shaped record ids: a three-character key prefix, a 12-character body and the
//! three-character case-safe suffix that turns a 15-character id into an 18-character one.

/// The key prefix of Contact ids.
pub const CONTACT_PREFIX: &str = "003";
/// The key prefix of Lead ids.
pub const LEAD_PREFIX: &str = "00Q";
/// The key prefix of Account ids.
pub const ACCOUNT_PREFIX: &str = "001";
/// The key prefix of Task ids.
pub const TASK_PREFIX: &str = "00T";
/// The key prefix of User ids.
pub const USER_PREFIX: &str = "005";
/// The key prefix of Organization ids.
pub const ORG_PREFIX: &str = "00D";

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SUFFIX: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// The 18-character id of the `n`th record with `prefix`: `prefix`, the pod-like `5g`, `n` in base 62
/// over ten characters, and the case-safe suffix (as Salesforce computes it, so clients that convert
/// 15-character ids to 18 agree with us).
pub fn record_id(prefix: &str, n: u64) -> String {
    debug_assert_eq!(prefix.len(), 3, "key prefixes are three characters");
    let mut body = [b'0'; 10];
    let mut rest = n;
    for slot in body.iter_mut().rev() {
        *slot = BASE62[(rest % 62) as usize];
        rest /= 62;
    }
    let mut id = String::with_capacity(18);
    id.push_str(prefix);
    id.push_str("5g");
    id.extend(body.iter().map(|&byte| char::from(byte)));
    let suffix = case_suffix(&id);
    id.push_str(&suffix);
    id
}

/// The three suffix characters of a 15-character id: for each five-character chunk, a bit per
/// upper-case letter, read as an index into `A..Z0..5`.
pub fn case_suffix(id15: &str) -> String {
    id15.as_bytes()
        .chunks(5)
        .take(3)
        .map(|chunk| {
            let bits = chunk
                .iter()
                .enumerate()
                .filter(|(_, byte)| byte.is_ascii_uppercase())
                .fold(0, |bits, (i, _)| bits | (1 << i));
            char::from(SUFFIX[bits])
        })
        .collect()
}

/// Whether `candidate` names the record whose 18-character id is `id`: the id itself, or its
/// 15-character (case-sensitive) form.
pub fn same_id(id: &str, candidate: &str) -> bool {
    candidate == id || (candidate.len() == 15 && id.starts_with(candidate))
}

/// Whether `id` looks like an 18-character id with `prefix` and a correct suffix.
pub fn is_valid_id(prefix: &str, id: &str) -> bool {
    id.len() == 18
        && id.starts_with(prefix)
        && id.bytes().all(|byte| byte.is_ascii_alphanumeric())
        && case_suffix(&id[..15]) == id[15..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_eighteen_characters_the_prefix_and_a_correct_suffix() {
        for (prefix, n) in [(CONTACT_PREFIX, 0), (LEAD_PREFIX, 1), (ACCOUNT_PREFIX, 61), (TASK_PREFIX, 1_000_000_007)] {
            let id = record_id(prefix, n);
            assert_eq!(id.len(), 18, "{id}");
            assert!(id.starts_with(prefix), "{id}");
            assert!(is_valid_id(prefix, &id), "{id}");
        }
        assert_ne!(record_id(TASK_PREFIX, 1), record_id(TASK_PREFIX, 2));
    }

    #[test]
    fn the_suffix_matches_salesforce_for_a_known_id() {
        // A documented example: 001A0000006Vm9r becomes 001A0000006Vm9rIAC.
        assert_eq!(case_suffix("001A0000006Vm9r"), "IAC");
        assert_eq!(case_suffix("003000000000000"), "AAA");
    }

    #[test]
    fn fifteen_character_forms_name_the_same_record() {
        let id = record_id(CONTACT_PREFIX, 42);
        assert!(same_id(&id, &id));
        assert!(same_id(&id, &id[..15]));
        assert!(!same_id(&id, &id[..14]));
        assert!(!same_id(&id, &record_id(CONTACT_PREFIX, 43)));
    }
}
