//! The two masking rules of pre-training (spec §6.2 VMLM, §6.3 SMRM; fixtures README "Masking
//! recipe"). Both consume the shared [`PyRandom`] stream in the reference's exact call order, so
//! a batch built from a seeded generator equals the reference's.

use super::pyrandom::PyRandom;

/// Probability that a token is selected for MLM (`dvl/data/mlm.py::random_word`).
pub const MLM_PROB: f64 = 0.15;

/// Label of a position the MLM loss ignores.
pub const IGNORE_LABEL: i64 = -1;

/// `random_word(tokens, v_range, mask)`: BERT-style masking of one caption's word pieces
/// (WITHOUT `[CLS]`/`[SEP]`).
///
/// Per token, one `random()` draw `u`: `u < 0.15` selects it (label = original id) and, with
/// `p = u / 0.15`, `p < 0.8` replaces it by `mask_id`, `p < 0.9` by
/// `random.choice(range(v_range.0, v_range.1))` (one `randbelow` draw; may return the original
/// id), otherwise keeps it. Unselected tokens get label [`IGNORE_LABEL`]. When nothing was
/// selected, token 0 is labelled with its id and becomes `mask_id` without any further draw.
///
/// Returns `(ids, labels)`, both `[tokens.len()]`. An empty caption yields two empty vectors
/// and no draw (the reference raises `IndexError`; the dataset rejects such records). An empty
/// `v_range` (which the dataset also rejects) keeps the token in the random-token branch
/// without drawing.
pub fn random_word(
    tokens: &[u32],
    rng: &mut PyRandom,
    v_range: (u32, u32),
    mask_id: u32,
) -> (Vec<u32>, Vec<i64>) {
    let mut ids = tokens.to_vec();
    let mut labels = vec![IGNORE_LABEL; tokens.len()];
    for (i, &token) in tokens.iter().enumerate() {
        let u = rng.random();
        if u < MLM_PROB {
            let p = u / MLM_PROB;
            if p < 0.8 {
                ids[i] = mask_id;
            } else if p < 0.9 && v_range.1 > v_range.0 {
                let span = u64::from(v_range.1 - v_range.0);
                // randbelow(span) < span <= u32::MAX, so the sum stays below v_range.1.
                ids[i] = v_range.0 + rng.randbelow(span) as u32;
            }
            labels[i] = i64::from(token);
        }
    }
    if !tokens.is_empty() && labels.iter().all(|&l| l == IGNORE_LABEL) {
        labels[0] = i64::from(tokens[0]);
        ids[0] = mask_id;
    }
    (ids, labels)
}

/// `_get_img_mask(mask_prob, num_bb)` (`dvl/data/mrm.py`): one `random()` per box, masked when
/// below `mask_prob`; when no box is masked, `random.choice(range(num_bb))` masks one.
///
/// Returns `[num_bb]`; empty (no draw) for `num_bb = 0`, where the reference raises.
pub fn img_mask(num_bb: usize, mask_prob: f64, rng: &mut PyRandom) -> Vec<bool> {
    let mut mask: Vec<bool> = (0..num_bb).map(|_| rng.random() < mask_prob).collect();
    if num_bb > 0 && !mask.iter().any(|&m| m) {
        let forced = rng.randbelow(num_bb as u64) as usize;
        mask[forced] = true;
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_token_is_always_masked() {
        // A one-token caption is either selected (any branch) or forced to MASK.
        let mut rng = PyRandom::seed(11);
        for _ in 0..200 {
            let (ids, labels) = random_word(&[5], &mut rng, (104, 128), 103);
            assert_eq!(labels, [5]);
            assert!(ids[0] == 103 || ids[0] == 5 || (104..128).contains(&ids[0]));
        }
    }

    #[test]
    fn empty_inputs_draw_nothing() {
        let mut rng = PyRandom::seed(1);
        let before = rng.state();
        assert_eq!(
            random_word(&[], &mut rng, (104, 128), 103),
            (vec![], vec![])
        );
        assert!(img_mask(0, 0.15, &mut rng).is_empty());
        assert_eq!(rng.state(), before);
    }

    #[test]
    fn img_mask_never_empty() {
        let mut rng = PyRandom::seed(2);
        for n in 1..50 {
            assert!(img_mask(n, 0.0, &mut rng).iter().filter(|&&m| m).count() == 1);
        }
    }
}
