//! The rollout buckets and waves (docs/spec.md §10) against published vectors and at scale:
//! a million host ids fill every 1 % band evenly, raising a wave never moves a host later, and
//! offers inside a wave are spread uniformly. Random ids come from a fixed seed, so every run
//! draws the same ones.

use qx_core::channel::Wave;
use qx_core::rollout::{bucket, draw, spread, wave_of, BUCKETS};
use rand::{Rng, SeedableRng};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    salt: String,
    host_id: String,
    bucket: u32,
    sha256_next8: String,
}

#[test]
fn buckets_match_the_published_vectors() {
    let text = include_str!("../vectors/rollout_buckets.json");
    let v: Vectors = serde_json::from_str(text).expect("the vectors parse");
    assert!(v.vectors.len() >= 10);
    for t in &v.vectors {
        assert_eq!(
            bucket(&t.salt, &t.host_id),
            t.bucket,
            "{}/{}",
            t.salt,
            t.host_id
        );
        let next = u64::from_str_radix(&t.sha256_next8, 16).expect("hex");
        let inside = (next >> 11) as f64 / (1u64 << 53) as f64;
        assert_eq!(
            draw(&t.salt, &t.host_id).inside,
            inside,
            "{}/{}",
            t.salt,
            t.host_id
        );
    }
}

/// `n` host ids as the server makes them (128 random bits in hex), from a fixed seed.
fn host_ids(n: usize) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    (0..n)
        .map(|_| format!("{:032x}", rng.random::<u128>()))
        .collect()
}

fn waves(percents: &[f64]) -> Vec<Wave> {
    percents
        .iter()
        .map(|p| Wave {
            percent: *p,
            not_before: jiff::Timestamp::UNIX_EPOCH,
        })
        .collect()
}

#[test]
fn a_million_hosts_fill_every_one_percent_band_within_five_hundredths() {
    let ids = host_ids(1_000_000);
    let mut bands = [0u32; 100];
    for id in &ids {
        bands[(bucket("salt-a", id) / (BUCKETS / 100)) as usize] += 1;
    }
    for (band, n) in bands.iter().enumerate() {
        let share = f64::from(*n) / ids.len() as f64 * 100.0;
        assert!(
            (share - 1.0).abs() <= 0.05,
            "band {band}% holds {share:.3}% of the hosts"
        );
    }
}

#[test]
fn raising_a_waves_percent_never_moves_a_host_later() {
    let ids = host_ids(20_000);
    let before = waves(&[1.0, 10.0, 50.0, 100.0]);
    let raised = waves(&[5.0, 10.0, 75.0, 100.0]);
    for id in &ids {
        let b = bucket("salt-b", id);
        let (old, new) = (wave_of(&before, b, false), wave_of(&raised, b, false));
        assert!(new <= old, "{id}: wave {old:?} became {new:?}");
    }
}

/// The Kolmogorov–Smirnov distance of `sample` (in 0..1) from the uniform distribution.
fn ks_uniform(mut sample: Vec<f64>) -> f64 {
    sample.sort_by(f64::total_cmp);
    let n = sample.len() as f64;
    sample
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let below = i as f64 / n;
            let upto = (i + 1) as f64 / n;
            (x - below).abs().max((upto - x).abs())
        })
        .fold(0.0, f64::max)
}

#[test]
fn offers_inside_a_wave_are_spread_uniformly_from_its_lower_bound() {
    let plan = waves(&[1.0, 10.0, 50.0, 100.0]);
    let draws: Vec<_> = host_ids(1_000_000)
        .iter()
        .map(|id| draw("salt-c", id))
        .collect();
    for wave in 0..plan.len() {
        let offsets: Vec<f64> = draws
            .iter()
            .filter(|d| wave_of(&plan, d.bucket, false) == Some(wave))
            .map(|d| spread(&plan, wave, *d))
            .collect();
        assert!(offsets.len() > 5000, "wave {wave}: {} hosts", offsets.len());
        let d = ks_uniform(offsets);
        assert!(d < 0.02, "wave {wave}: KS distance {d:.4}");
    }
    // A spread that ignored the lower bound would crowd the second wave's hosts at its end.
    let d = ks_uniform(vec![0.9; 100]);
    assert!(d > 0.5, "the measure sees a clump: {d}");
}
