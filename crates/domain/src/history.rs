//! The rule that picks a session's effective mark from its versions.
//!
//! Every change to a mark is a new version; nothing is changed in place. The effective version
//! is the one taken latest (`recorded_at`), and of versions taken at the same time, the one
//! received last (the higher `sequence`). The rule depends only on the versions, not on the
//! order they arrive in or the channel that sent them.

use chrono::{DateTime, Utc};

/// The ordering key of a version: when it was taken, then when it was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct VersionKey {
    /// When the mark was taken.
    pub recorded_at: DateTime<Utc>,
    /// Its position in the change feed, which increases as versions are received.
    pub sequence: i64,
}

/// Returns true when a version with key `new` replaces the effective version `current`.
pub fn supersedes(new: VersionKey, current: VersionKey) -> bool {
    new > current
}

/// Returns the index of the effective version among `versions`, or `None` when there are none.
pub fn effective_index(versions: &[VersionKey]) -> Option<usize> {
    versions
        .iter()
        .enumerate()
        .max_by_key(|(_, key)| **key)
        .map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(seconds: i64, sequence: i64) -> VersionKey {
        VersionKey {
            recorded_at: DateTime::from_timestamp(seconds, 0).expect("valid time"),
            sequence,
        }
    }

    #[test]
    fn later_taken_wins_over_later_received() {
        assert!(!supersedes(key(100, 2), key(200, 1)));
        assert!(supersedes(key(200, 2), key(100, 1)));
        assert!(
            supersedes(key(100, 2), key(100, 1)),
            "same time: received last wins"
        );
    }

    proptest! {
        /// Applying versions one at a time in feed order, as the registers do, ends on the same
        /// version as choosing from the whole history at once, whatever the times taken.
        #[test]
        fn incremental_matches_whole_history(times in proptest::collection::vec(0i64..50, 1..40)) {
            let versions: Vec<VersionKey> = times
                .iter()
                .enumerate()
                .map(|(index, seconds)| key(*seconds, index as i64 + 1))
                .collect();
            let mut current: Option<usize> = None;
            for (index, version) in versions.iter().enumerate() {
                if current.is_none_or(|effective| supersedes(*version, versions[effective])) {
                    current = Some(index);
                }
            }
            prop_assert_eq!(current, effective_index(&versions));
        }

        /// The effective version does not depend on the order the list is read in.
        #[test]
        fn effective_ignores_list_order(times in proptest::collection::vec(0i64..50, 1..40), seed in 0usize..1000) {
            let versions: Vec<VersionKey> = times
                .iter()
                .enumerate()
                .map(|(index, seconds)| key(*seconds, index as i64 + 1))
                .collect();
            let mut shuffled = versions.clone();
            shuffled.rotate_left(seed % versions.len());
            shuffled.reverse();
            let chosen = versions[effective_index(&versions).expect("non-empty")];
            let chosen_shuffled = shuffled[effective_index(&shuffled).expect("non-empty")];
            prop_assert_eq!(chosen, chosen_shuffled);
        }
    }
}
