//! Sorted-set queries over the entries of a stored ZSET value (kept sorted by score, then
//! member: see `value::zcmp`). Reads only; the daemon's updates are in `update.rs`. The
//! binding converts arguments and results; the rank and range rules live here, once.

use crate::value::ZEntry;

/// Entries by rank, `start` and `stop` inclusive, negative counting from the end (Redis
/// ZRANGE); `desc` ranks from the highest score.
pub fn by_rank<'e, 'v>(
    entries: &'e [ZEntry<'v>],
    start: i64,
    stop: i64,
    desc: bool,
) -> Vec<&'e ZEntry<'v>> {
    let n = entries.len() as i64;
    let norm = |i: i64| if i < 0 { i.saturating_add(n) } else { i };
    let (a, b) = (norm(start).max(0), norm(stop).min(n - 1));
    if a > b || a >= n {
        return Vec::new();
    }
    (a..=b).map(|i| &entries[if desc { n - 1 - i } else { i } as usize]).collect()
}

/// Entries with `lo <= score <= hi`, lowest first (`desc`: highest first).
pub fn by_score<'e, 'v>(
    entries: &'e [ZEntry<'v>],
    lo: f64,
    hi: f64,
    desc: bool,
) -> Vec<&'e ZEntry<'v>> {
    let mut v: Vec<_> = entries.iter().filter(|e| lo <= e.score && e.score <= hi).collect();
    if desc {
        v.reverse();
    }
    v
}

/// The score of `member`, if present.
pub fn score(entries: &[ZEntry<'_>], member: &[u8]) -> Option<f64> {
    entries.iter().find(|e| e.member == member).map(|e| e.score)
}

/// The rank of `member` (0: the lowest score; `desc`: 0 is the highest), if present.
pub fn rank(entries: &[ZEntry<'_>], member: &[u8], desc: bool) -> Option<usize> {
    let i = entries.iter().position(|e| e.member == member)?;
    Some(if desc { entries.len() - 1 - i } else { i })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(member: &'static [u8], score: f64) -> ZEntry<'static> {
        ZEntry { score, member, is_str: true }
    }

    #[test]
    fn ranks_and_ranges_follow_redis() {
        let z = [e(b"a", 1.0), e(b"b", 2.0), e(b"c", 3.0), e(b"d", 4.0)];
        let m = |v: Vec<&ZEntry<'_>>| v.iter().map(|e| e.member[0]).collect::<Vec<u8>>();
        assert_eq!(m(by_rank(&z, 0, -1, false)), b"abcd");
        assert_eq!(m(by_rank(&z, -2, -1, false)), b"cd");
        assert_eq!(m(by_rank(&z, 0, 1, true)), b"dc");
        assert_eq!(m(by_rank(&z, 3, 1, false)), b"");
        assert_eq!(m(by_rank(&z, 9, 12, false)), b"");
        assert_eq!(m(by_rank(&z, i64::MIN, i64::MAX, false)), b"abcd");
        assert_eq!(m(by_rank(&[], 0, -1, false)), b"");
        assert_eq!(m(by_score(&z, 2.0, 3.0, true)), b"cb");
        assert_eq!((score(&z, b"c"), score(&z, b"x")), (Some(3.0), None));
        assert_eq!((rank(&z, b"a", false), rank(&z, b"a", true)), (Some(0), Some(3)));
    }
}
