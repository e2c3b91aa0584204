//! Sequences that begin with the same tokens (a preference pair's prompt, a prompt's k
//! samples), found so that scoring and training compute those tokens once
//! ([`super::decoder::Packing::shared`]).

/// Sequences scored together with their common first tokens stored once.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixGroup {
    /// Tokens every member begins with (0 for a group of one).
    pub prefix: usize,
    /// Indices of the member sequences.
    pub members: Vec<usize>,
}

/// The fewest shared tokens that make a group: below it the saving is not worth the masked
/// keys the attention kernel computes between the members.
pub const MIN_SHARED_PREFIX: usize = 16;
/// The most sequences on one prefix.
pub const MAX_GROUP: usize = 16;

/// Groups sequences that begin with the same tokens (a preference pair's chosen and rejected
/// responses to one prompt, the k samples of one prompt). Sorted by their tokens, sequences
/// with a common prefix are neighbours; the sorted list is cut into runs of at most
/// [`MAX_GROUP`] that share at least [`MIN_SHARED_PREFIX`] tokens, choosing the cuts that
/// save the most tokens (a run of n on a prefix of p saves (n - 1)·p; exact, by dynamic
/// programming; on a tie, the smaller runs with longer prefixes). Deterministic; groups in
/// the order of their first member, members in input order.
pub fn group_prefixes(seqs: &[&[u32]]) -> Vec<PrefixGroup> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by(|&a, &b| seqs[a].cmp(seqs[b]).then(a.cmp(&b)));
    let n = order.len();
    // common[k]: tokens sorted sequences k - 1 and k share (k >= 1).
    let common: Vec<usize> = (0..n)
        .map(|k| match k {
            0 => 0,
            _ => {
                let (a, b) = (seqs[order[k - 1]], seqs[order[k]]);
                a.iter().zip(b).take_while(|(x, y)| x == y).count()
            }
        })
        .collect();
    // best[j]: the most tokens saved on the first j sorted sequences; cut[j]: where the last
    // run starts, and its prefix.
    let mut best = vec![0usize; n + 1];
    let mut cut = vec![(0usize, 0usize); n + 1];
    for j in 1..=n {
        (best[j], cut[j]) = (best[j - 1], (j - 1, 0));
        let mut prefix = usize::MAX;
        for s in (j.saturating_sub(MAX_GROUP)..j - 1).rev() {
            prefix = prefix.min(common[s + 1]);
            if prefix < MIN_SHARED_PREFIX {
                break;
            }
            let saved = best[s] + (j - s - 1) * prefix;
            if saved > best[j] {
                (best[j], cut[j]) = (saved, (s, prefix));
            }
        }
    }
    let mut groups = Vec::new();
    let mut j = n;
    while j > 0 {
        let (s, prefix) = cut[j];
        groups.push(PrefixGroup { prefix, members: order[s..j].to_vec() });
        j = s;
    }
    // In input order (by each group's first member), so that nothing moves when nothing is
    // shared.
    groups.iter_mut().for_each(|g| g.members.sort_unstable());
    groups.sort_by_key(|g| g.members[0]);
    groups
}
