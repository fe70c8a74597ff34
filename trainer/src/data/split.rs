//! Stratified k-fold by organ: each organ's slides are shuffled (seeded) and dealt round-robin,
//! continuing where the previous organ stopped, so every fold gets each organ in proportion and
//! the folds' sizes differ by at most one.

use std::collections::BTreeMap;

use ftu_formats::schema::TrainRow;
use ftu_formats::Organ;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The fold of each row, in row order.
pub fn stratified(rows: &[TrainRow], folds: usize, seed: u64) -> Vec<usize> {
    let mut by_organ: BTreeMap<Organ, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        by_organ.entry(r.organ).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fold_of = vec![0; rows.len()];
    let mut next = 0;
    for (_, mut idx) in by_organ {
        idx.shuffle(&mut rng);
        for i in idx {
            fold_of[i] = next % folds;
            next += 1;
        }
    }
    fold_of
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftu_formats::DataSource;

    fn row(id: usize, organ: Organ) -> TrainRow {
        TrainRow {
            id: id.to_string(),
            organ,
            data_source: DataSource::Hpa,
            img_height: 10,
            img_width: 10,
            pixel_size: 0.4,
            tissue_thickness: 4.0,
            rle: String::new(),
            age: None,
            sex: None,
        }
    }

    #[test]
    fn every_fold_gets_each_organ_in_proportion_and_seeds_repeat() {
        let organs = [
            Organ::Kidney,
            Organ::Prostate,
            Organ::LargeIntestine,
            Organ::Spleen,
            Organ::Lung,
        ];
        let rows: Vec<TrainRow> = (0..53).map(|i| row(i, organs[i % 5])).collect();
        let folds = stratified(&rows, 5, 7);
        assert_eq!(folds, stratified(&rows, 5, 7));
        assert_ne!(folds, stratified(&rows, 5, 8));
        for f in 0..5 {
            let size = folds.iter().filter(|&&x| x == f).count();
            assert!((10..=11).contains(&size), "fold {f} has {size}");
            for organ in organs {
                let n_organ = rows.iter().filter(|r| r.organ == organ).count();
                let in_fold = rows
                    .iter()
                    .zip(&folds)
                    .filter(|(r, &x)| r.organ == organ && x == f)
                    .count();
                assert!(
                    in_fold.abs_diff(n_organ / 5) <= 1,
                    "{organ} fold {f}: {in_fold} of {n_organ}"
                );
            }
        }
    }
}
