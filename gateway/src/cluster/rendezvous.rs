//! Rendezvous (highest random weight) hashing and the ownership decision built on it: which node
//! should own a line, and what one node must release and claim to get there. Pure: no clock, no
//! etcd, no tasks; the node's loop (`cluster::node`) carries the decisions out.

use std::collections::{BTreeMap, BTreeSet};

/// FNV-1a over `bytes`, continuing from `state`. Stable across builds and platforms, unlike std's
/// `DefaultHasher`: every node must compute the same scores, whatever it was built with.
fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        state ^= u64::from(*byte);
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state
}

/// splitmix64's finaliser: FNV alone leaves similar inputs (`2001`, `2002`) with similar high bits,
/// which would skew the spread.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The weight of `node` for `line`. A separator byte keeps `("ab", "c")` and `("a", "bc")` apart.
pub fn score(node: &str, line: &str) -> u64 {
    let state = fnv1a(0xcbf2_9ce4_8422_2325, node.as_bytes());
    let state = fnv1a(state, &[0xff]);
    mix(fnv1a(state, line.as_bytes()))
}

/// The node that should own `line` among `members`: the highest score, ties to the smaller id.
/// `None` when there are no members.
pub fn owner<'a>(line: &str, members: impl IntoIterator<Item = &'a String>) -> Option<&'a str> {
    members
        .into_iter()
        .map(|node| (score(node, line), node))
        .max_by(|(a, node_a), (b, node_b)| a.cmp(b).then_with(|| node_b.cmp(node_a)))
        .map(|(_, node)| node.as_str())
}

/// The lines `me` stands by for among `members`: those whose owner is another member and whose
/// next choice is `me`. Rendezvous hashing makes the next choice the owner when the owner leaves,
/// so a standby that watches its lines already is the node that takes them at a failover.
pub fn standby(me: &str, lines: &BTreeSet<String>, members: &BTreeSet<String>) -> BTreeSet<String> {
    if !members.contains(me) {
        return BTreeSet::new();
    }
    lines
        .iter()
        .filter(|line| {
            let Some(first) = owner(line, members) else { return false };
            first != me && owner(line, members.iter().filter(|node| node.as_str() != first)) == Some(me)
        })
        .cloned()
        .collect()
}

/// The whole assignment: each line to its owner among `members`.
pub fn assign<'a>(lines: &'a BTreeSet<String>, members: &'a BTreeSet<String>) -> BTreeMap<&'a str, &'a str> {
    lines.iter().filter_map(|line| Some((line.as_str(), owner(line, members)?))).collect()
}

/// What one node must do to reach the assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Lines it holds but should not: stop serving, then release the claim.
    pub release: Vec<String>,
    /// Lines it should hold and does not: claim, then serve.
    pub claim: Vec<String>,
}

/// Decides what `me` releases and claims, given the lines there are, the live members it sees and
/// the lines it holds. It claims only when `may_claim` (its lease is known valid and it has just
/// heard from etcd): a node cut off from etcd keeps what it holds and takes nothing new. A node
/// that is not among `members` (its registration is gone) releases everything.
pub fn decide(
    me: &str,
    lines: &BTreeSet<String>,
    members: &BTreeSet<String>,
    held: &BTreeSet<String>,
    may_claim: bool,
) -> Decision {
    let release =
        held.iter().filter(|line| !lines.contains(*line) || owner(line, members) != Some(me)).cloned().collect();
    let claim = if may_claim {
        lines.iter().filter(|line| !held.contains(*line) && owner(line, members) == Some(me)).cloned().collect()
    } else {
        Vec::new()
    };
    Decision { release, claim }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    fn lines(count: usize) -> BTreeSet<String> {
        (0..count).map(|n| format!("{}", 2000 + n)).collect()
    }

    #[test]
    fn scores_are_stable_across_builds() {
        // Pinned values: a change here would make nodes of two builds disagree on every owner.
        assert_eq!(score("node-a", "2001"), score("node-a", "2001"));
        assert_ne!(score("ab", "c"), score("a", "bc"));
        assert_eq!(fnv1a(0xcbf2_9ce4_8422_2325, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn no_members_no_owner() {
        assert_eq!(owner("2001", &BTreeSet::new()), None);
    }

    #[test]
    fn three_nodes_share_ten_thousand_lines_evenly() {
        let members = set(&["node-1", "node-2", "node-3"]);
        let lines = lines(10_000);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for owner in assign(&lines, &members).values() {
            *counts.entry(owner).or_default() += 1;
        }
        assert_eq!(counts.values().sum::<usize>(), 10_000);
        for (node, count) in counts {
            // A third is 3,333; a fair hash stays well within 5% of it.
            assert!((3_166..=3_500).contains(&count), "{node} got {count} of 10,000");
        }
    }

    #[test]
    fn a_lone_node_stands_by_for_nothing_and_of_three_each_stands_by_for_a_third() {
        let lines = lines(3_000);
        assert!(standby("node-1", &lines, &set(&["node-1"])).is_empty());
        assert!(standby("node-9", &lines, &set(&["node-1", "node-2"])).is_empty(), "not a member");
        let members = set(&["node-1", "node-2", "node-3"]);
        for node in &members {
            let count = standby(node, &lines, &members).len();
            assert!((850..=1_150).contains(&count), "{node} stands by for {count} of 3,000");
        }
    }

    proptest! {
        #[test]
        fn the_standby_of_a_line_is_the_owner_once_its_owner_leaves(
            members in proptest::collection::btree_set("[a-z]{1,6}", 2..8),
            lines in proptest::collection::btree_set("[0-9]{1,5}", 0..64),
        ) {
            let owners = assign(&lines, &members);
            for line in &lines {
                let standbys: Vec<&String> =
                    members.iter().filter(|node| standby(node, &lines, &members).contains(line)).collect();
                prop_assert_eq!(standbys.len(), 1, "one standby per line");
                let owner = owners[line.as_str()];
                prop_assert_ne!(standbys[0].as_str(), owner);
                let survivors: BTreeSet<String> = members.iter().filter(|node| *node != owner).cloned().collect();
                prop_assert_eq!(super::owner(line, &survivors), Some(standbys[0].as_str()));
            }
        }

        #[test]
        fn every_line_has_exactly_one_owner_among_the_members(
            members in proptest::collection::btree_set("[a-z]{1,6}", 1..8),
            lines in proptest::collection::btree_set("[0-9]{1,5}", 0..64),
        ) {
            let assignment = assign(&lines, &members);
            prop_assert_eq!(assignment.len(), lines.len());
            for owner in assignment.values() {
                prop_assert!(members.contains(*owner));
            }
        }

        #[test]
        fn a_join_moves_lines_only_to_the_new_node(
            members in proptest::collection::btree_set("[a-z]{1,6}", 1..8),
            joiner in "[A-Z]{1,6}",
            lines in proptest::collection::btree_set("[0-9]{1,5}", 0..64),
        ) {
            let before = assign(&lines, &members);
            let mut grown = members.clone();
            grown.insert(joiner.clone());
            let after = assign(&lines, &grown);
            for (line, owner) in &after {
                prop_assert!(*owner == before[line] || *owner == joiner.as_str());
            }
        }

        #[test]
        fn a_leave_moves_only_the_leavers_lines(
            members in proptest::collection::btree_set("[a-z]{1,6}", 2..8),
            leaver_index in 0usize..8,
            lines in proptest::collection::btree_set("[0-9]{1,5}", 0..64),
        ) {
            let leaver = members.iter().nth(leaver_index % members.len()).cloned().unwrap_or_default();
            let before = assign(&lines, &members);
            let mut shrunk = members.clone();
            shrunk.remove(&leaver);
            let after = assign(&lines, &shrunk);
            for (line, owner) in &after {
                if before[line] != leaver.as_str() {
                    prop_assert_eq!(*owner, before[line]);
                }
            }
        }

        #[test]
        fn nodes_deciding_from_one_view_never_claim_the_same_line(
            members in proptest::collection::btree_set("[a-z]{1,6}", 1..6),
            lines in proptest::collection::btree_set("[0-9]{1,4}", 0..48),
            held_mask in proptest::collection::vec(any::<u8>(), 48),
        ) {
            // Whatever each node holds now (stale from an older view), after releasing and claiming
            // as decided, the nodes hold disjoint sets that together cover every line.
            let mut after: BTreeMap<String, String> = BTreeMap::new();
            for (index, node) in members.iter().enumerate() {
                let held: BTreeSet<String> = lines
                    .iter()
                    .enumerate()
                    .filter(|(n, _)| held_mask[*n] as usize % (members.len() + 1) == index)
                    .map(|(_, line)| line.clone())
                    .collect();
                let decision = decide(node, &lines, &members, &held, true);
                let mut now: BTreeSet<String> = held.difference(&decision.release.iter().cloned().collect()).cloned().collect();
                now.extend(decision.claim);
                for line in now {
                    prop_assert!(after.insert(line.clone(), node.clone()).is_none(), "{} claimed twice", line);
                }
            }
            prop_assert_eq!(after.len(), lines.len());
        }

        #[test]
        fn a_node_cut_off_keeps_its_lines_and_takes_none(
            members in proptest::collection::btree_set("[a-z]{1,6}", 1..6),
            lines in proptest::collection::btree_set("[0-9]{1,4}", 0..48),
        ) {
            let me = members.iter().next().cloned().unwrap_or_default();
            let mine: BTreeSet<String> =
                lines.iter().filter(|line| owner(line, &members) == Some(me.as_str())).cloned().collect();
            let decision = decide(&me, &lines, &members, &mine, false);
            prop_assert!(decision.release.is_empty());
            prop_assert!(decision.claim.is_empty());
            let from_nothing = decide(&me, &lines, &members, &BTreeSet::new(), false);
            prop_assert!(from_nothing.claim.is_empty());
        }

        #[test]
        fn a_node_without_registration_releases_everything(
            members in proptest::collection::btree_set("[a-z]{1,6}", 0..6),
            lines in proptest::collection::btree_set("[0-9]{1,4}", 0..48),
        ) {
            let decision = decide("NOT-A-MEMBER", &lines, &members, &lines, true);
            prop_assert_eq!(decision.release.len(), lines.len());
            prop_assert!(decision.claim.is_empty());
        }
    }
}
